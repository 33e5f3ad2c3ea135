"""Shared fixtures: small random Broden-format datasets with every kind of label."""

from __future__ import annotations

import os
import sys
import tempfile

# One XLA compilation cache for the whole run, shared by both xdist workers and every CLI
# subprocess a test starts (they inherit the environment): a program is compiled once and
# loaded after that. Compiling is a large share of this suite's time on a small CPU. Set
# before JAX is first imported; a compiled program gives the same results however it was obtained.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "dissectjax-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
)  # torch_models

from dissectjax.data.broden import BrodenRow, LabelInfo, write_broden

SHARED = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared"))
CONFORMANCE = os.path.join(SHARED, "conformance")


def random_broden(root, seed=0, n=23, sizes=((12, 12), (10, 14)), image_size=(20, 20), image_only=0.0,
                  absent=()):  # fmt: skip
    """Writes a random Broden dataset; returns (concept categories, per-image labels) for the reference.

    Categories: color (pixel, 1 layer), object (pixel, 0-2 layers with overlaps), part
    (pixel, often absent), scene (image-level), texture (image-level, 0-2 labels).
    Label numbers are not contiguous (gaps), to exercise the number -> column mapping.
    A share ``image_only`` of the rows has image-level labels only; categories in ``absent``
    label nothing anywhere (their concepts stay in label.csv).
    """
    rng = np.random.default_rng(seed)
    categories = ("color", "object", "part", "scene", "texture")
    per_cat = {"color": 5, "object": 6, "part": 3, "scene": 4, "texture": 4}
    labels, number = [], 1
    for cat in categories:
        for j in range(per_cat[cat]):
            labels.append(LabelInfo(number, f"{cat}{j}", cat))
            number += 1 + int(rng.integers(0, 3))  # gaps in the numbering
    numbers = {cat: [lb.number for lb in labels if lb.category == cat] for cat in categories}
    rows = []
    for i in range(n):
        sh, sw = sizes[i % len(sizes)]
        pixel, image_level = {}, {}

        def layer(cat, p_empty, sh=sh, sw=sw):
            m = np.array(numbers[cat])[rng.integers(0, len(numbers[cat]), (sh, sw))]
            m[rng.random((sh, sw)) < p_empty] = 0
            return m.astype(np.int32)

        pixel["color"] = [layer("color", 0.1)]
        k = int(rng.integers(0, 3))
        if k:
            pixel["object"] = [layer("object", 0.4) for _ in range(k)]
        if rng.random() < 0.4:
            pixel["part"] = [layer("part", 0.7)]
        image_level["scene"] = [int(rng.choice(numbers["scene"]))]
        t = int(rng.integers(0, 3))
        if t:
            image_level["texture"] = [int(x) for x in rng.choice(numbers["texture"], t, replace=False)]
        if rng.random() < 0.3:  # a concept both image-level and (in another column) pixel-level
            if numbers["texture"][0] not in image_level.get("texture", []):
                image_level["texture"] = [*image_level.get("texture", []), int(numbers["texture"][0])]
            extra = np.where(rng.random((sh, sw)) < 0.5, numbers["texture"][0], 0).astype(np.int32)
            pixel["part"] = [*pixel.get("part", []), extra]
        if image_only and rng.random() < image_only:  # (no draw otherwise: the default data stay as they were)
            pixel = {}
        pixel = {c: maps for c, maps in pixel.items() if c not in absent}
        image_level = {c: values for c, values in image_level.items() if c not in absent}
        image = rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)
        rows.append(
            BrodenRow(f"im{i:03d}.png", "train" if i % 3 else "val", image_size, (sh, sw), pixel, image_level, image)
        )
    write_broden(str(root), categories, labels, rows)
    return labels, rows


def reference_labels(labels, rows, categories):
    """Per-image pixel layers [L, sh, sw] and image-level lists as concept indices (raw, with repeats)."""
    column = {lb.number: j for j, lb in enumerate(sorted(labels, key=lambda lb: lb.number))}
    to_col = np.vectorize(lambda x: column.get(int(x), -1))
    pixel, image = [], []
    for row in rows:
        maps = [to_col(m) for c in categories for m in row.pixel.get(c, [])]
        pixel.append(np.stack(maps) if maps else np.zeros((0, *row.label_size), int))
        image.append([column[x] for c in categories for x in row.image_level.get(c, [])])
    category = np.array([categories.index(lb.category) for lb in sorted(labels, key=lambda lb: lb.number)])
    return pixel, image, category


@pytest.fixture(scope="session")
def broden_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("broden") / "ds"
    labels, rows = random_broden(root)
    return str(root), labels, rows


CHECKPOINT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "checkpoints", "scenenet"))


@pytest.fixture(scope="session")
def scene_dissection(tmp_path_factory):
    """A dissection of the committed scene classifier (conv4, conv5) on 48 synthetic scenes,
    written by the CLI with its report: (output directory, probe dataset)."""
    from dissectjax.cli import main
    from dissectjax.data.open import open_probe

    out = tmp_path_factory.mktemp("scene") / "out"
    args = ["dissect", "--dataset", "synthetic:48", "--checkpoint", CHECKPOINT, "--layers", "conv4,conv5",
            "--out", str(out), "--batch-size", "16", "--quiet", "--no-resume"]  # fmt: skip
    assert main(args) == 0
    dataset, _ = open_probe("synthetic:48")
    return str(out), dataset


def run_cli_killed_after(argv, batches: int):
    """Runs ``dissectjax ARGV`` in a subprocess that SIGKILLs itself when its progress bar reaches
    batch ``batches`` (counting every pass); returns the CompletedProcess (returncode -9 when killed)."""
    import subprocess
    import textwrap

    killer = textwrap.dedent(f"""
        import os, signal, sys
        from dissectjax import cli
        from dissectjax.cli import dissect as cli_dissect
        seen = [0]
        def progress(enabled):
            def wrap(iterable, **_):
                for item in iterable:
                    if seen[0] == {int(batches)}:
                        os.kill(os.getpid(), signal.SIGKILL)
                    seen[0] += 1
                    yield item
            return wrap
        cli_dissect.progress_bars = progress
        sys.exit(cli.main({[str(a) for a in argv]!r}))
    """)
    return subprocess.run([sys.executable, "-c", killer], capture_output=True, text=True, timeout=300)


def serve_in_thread(service):
    """``dissectjax.app.serve`` on a free loopback port in a daemon thread: (server, thread)."""
    import threading

    from dissectjax.app import serve

    started = threading.Event()
    holder = {}

    def ready(server):
        holder["server"] = server
        started.set()

    thread = threading.Thread(target=serve, args=(service, "127.0.0.1", 0, ready), daemon=True)
    thread.start()
    assert started.wait(60)
    return holder["server"], thread


def class_folders(root, classes=20, per_class=4, seed=0, sizes=((40, 30), (50, 70))):
    """Writes a class-folder image set, ROOT/<class>/<images> (real JPEG files); returns the sorted
    class names ``class00``, ``class01``, ...

    ``per_class``: images per class (an int, or one count per class). Image k of class c is
    ``img{k:02d}`` with the extension ``.jpg``, ``.JPEG`` or ``.jpeg`` (k mod 3), a size
    (width, height) drawn from ``sizes`` by ``seed``, and one flat color: red
    ``round(255 (c + 0.5) / classes)``, green ``round(255 (k + 0.5) / max(per_class))``, blue
    drawn by ``seed`` (JPEG keeps flat colors within a few levels).
    """
    from PIL import Image

    counts = [per_class] * classes if np.isscalar(per_class) else list(per_class)
    rng = np.random.default_rng(seed)
    names = [f"class{c:02d}" for c in range(classes)]
    for c, (name, n) in enumerate(zip(names, counts)):
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for k in range(n):
            w, h = sizes[int(rng.integers(len(sizes)))]
            color = (round(255 * (c + 0.5) / classes), round(255 * (k + 0.5) / max(counts)), int(rng.integers(256)))
            path = os.path.join(root, name, f"img{k:02d}{('.jpg', '.JPEG', '.jpeg')[k % 3]}")
            Image.new("RGB", (w, h), color).save(path, format="JPEG", quality=95)
    return names


def convert_resnet18(tmp, seed: int, classes: int, size: int) -> str:
    """A torchvision-layout ResNet-18 (random weights, calibrated BatchNorm) written as a
    PyTorch state dict and brought in with ``dissectjax convert``; returns the checkpoint path.
    Skips the test where PyTorch is not installed."""
    import pytest

    torch = pytest.importorskip("torch", reason="PyTorch is not installed: the checkpoints are converted from it")
    from test_convert import torch_model

    from dissectjax.cli import main

    weights = os.path.join(tmp, f"resnet18-{seed}.pth")
    torch.save(torch_model("resnet18", num_classes=classes, seed=seed).state_dict(), weights)
    out = os.path.join(tmp, f"resnet18-{seed}")
    assert main(["convert", "--arch", "resnet18", "--weights", weights, "--out", out, "--input-size", str(size)]) == 0
    return out
