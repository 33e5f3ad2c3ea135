"""Digit images for neuron-specialization experiments: styled strokes, scikit-learn, MNIST.

* :func:`styled_digits`: digits drawn from strokes with jitter, slant, rotation, scale and
  thickness, deterministic per (seed, index), with named style variants drawn at known
  rates (7 plain / crossed / hooked, 2 plain / looped, 1 plain / with a base). Every sample
  carries its style tag, e.g. ``"7-crossed"``.
* :func:`sklearn_digits`: scikit-learn's bundled handwritten digits (1,797 images, 8 x 8),
  resized to the model input; offline.
* :func:`tfds_mnist`: MNIST from a TFDS ``data_dir`` the user prepared; nothing is downloaded.

All return uint8 images [N, S, S, 1] (white strokes on black), int32 labels [N] and
string tags [N].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dissectjax.errors import DissectError, first_line

# Style variants per digit: (name, rate); rates of a digit sum to 1.
DEFAULT_STYLES: dict[int, tuple[tuple[str, float], ...]] = {
    1: (("plain", 0.6), ("base", 0.4)),
    2: (("plain", 0.6), ("loop", 0.4)),
    7: (("plain", 0.5), ("crossed", 0.3), ("hook", 0.2)),
}


def _arc(cx, cy, rx, ry, start_deg, end_deg, n=14):
    t = np.radians(np.linspace(start_deg, end_deg, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _line(*points):
    return np.asarray(points, float)


def strokes(digit: int, style: str = "plain") -> list[np.ndarray]:
    """Polylines [n, 2] in the unit square (x right, y down) that draw ``digit`` in ``style``."""
    s = {
        0: [_arc(0.5, 0.5, 0.26, 0.37, 0, 360, 24)],
        1: [_line((0.36, 0.26), (0.52, 0.12), (0.52, 0.88))],
        2: [
            np.concatenate([_arc(0.5, 0.33, 0.23, 0.2, 190, 375), _line((0.24, 0.88))]),
            _line((0.24, 0.88), (0.78, 0.88)),
        ],
        3: [_arc(0.48, 0.31, 0.21, 0.19, 200, 450), _arc(0.48, 0.69, 0.24, 0.2, 270, 520)],
        4: [_line((0.66, 0.88), (0.66, 0.12), (0.22, 0.64), (0.82, 0.64))],
        5: [_line((0.76, 0.13), (0.32, 0.13), (0.29, 0.46)), _arc(0.47, 0.66, 0.24, 0.22, 230, 500)],
        6: [np.concatenate([_line((0.68, 0.12), (0.4, 0.36)), _arc(0.5, 0.67, 0.2, 0.21, 200, 560, 24)])],
        7: [_line((0.22, 0.14), (0.78, 0.14), (0.42, 0.88))],
        8: [_arc(0.5, 0.3, 0.17, 0.17, 0, 360, 20), _arc(0.5, 0.68, 0.21, 0.2, 0, 360, 20)],
        9: [_arc(0.5, 0.33, 0.2, 0.2, 0, 360, 20), _line((0.7, 0.34), (0.62, 0.88))],
    }[digit]
    extra = {
        (1, "base"): [_line((0.32, 0.88), (0.72, 0.88))],
        (7, "crossed"): [_line((0.42, 0.51), (0.78, 0.51))],
        (7, "hook"): [_line((0.22, 0.14), (0.2, 0.27))],
    }.get((digit, style), [])
    if (digit, style) == (2, "loop"):  # a small loop where the diagonal meets the base
        diag = np.concatenate([_arc(0.5, 0.33, 0.23, 0.2, 190, 375), _line((0.3, 0.8))])
        s = [np.concatenate([diag, _arc(0.3, 0.8, 0.08, 0.08, -45, 315, 14)[::-1]]), _line((0.24, 0.88), (0.78, 0.88))]
    elif style != "plain" and not extra:
        raise ValueError(f"digit {digit} has no style {style!r}")
    return s + extra


@dataclasses.dataclass(frozen=True)
class StyledDigitsConfig:
    size: int = 12000
    seed: int = 0
    image_size: int = 32
    styles: tuple = tuple(sorted((d, v) for d, v in DEFAULT_STYLES.items()))

    def style_table(self) -> dict[int, tuple[tuple[str, float], ...]]:
        return dict(self.styles)


def with_rates(config: StyledDigitsConfig, digit: int, rates: dict[str, float]) -> StyledDigitsConfig:
    """The config with ``digit``'s style rates replaced (they must sum to 1)."""
    if abs(sum(rates.values()) - 1) > 1e-9:
        raise ValueError(f"style rates of {digit} must sum to 1, got {rates}")
    table = config.style_table() | {digit: tuple(rates.items())}
    return dataclasses.replace(config, styles=tuple(sorted(table.items())))


def _render(polylines: list[np.ndarray], thickness: float, size: int) -> np.ndarray:
    """float32 [size, size] in [0, 1]: anti-aliased strokes of half-width ``thickness``."""
    segs = np.concatenate([np.stack([p[:-1], p[1:]], axis=1) for p in polylines])  # [S, 2, 2]
    c = (np.arange(size) + 0.5) / size
    px = np.stack(np.meshgrid(c, c, indexing="xy"), axis=-1).reshape(-1, 1, 2)  # [P, 1, 2] (x, y)
    a, b = segs[None, :, 0], segs[None, :, 1]
    ab = b - a
    t = np.clip(np.sum((px - a) * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-12), 0, 1)
    d = np.linalg.norm(px - (a + t[..., None] * ab), axis=-1).min(axis=1)
    return np.clip((thickness - d) * size + 0.5, 0, 1).reshape(size, size).astype(np.float32)


def draw(digit: int, style: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One jittered, slanted, rotated, scaled sample: float32 [size, size]."""
    slant, angle = rng.normal(0, 0.15), np.radians(rng.normal(0, 6))
    scale, shift = rng.uniform(0.82, 1.02), rng.uniform(-0.06, 0.06, 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lines = []
    for p in strokes(digit, style):
        q = p + rng.normal(0, 0.012, p.shape)
        q = q - 0.5
        q = np.stack([q[:, 0] - slant * q[:, 1], q[:, 1]], axis=1) @ rot.T * scale
        lines.append(q + 0.5 + shift)
    return _render(lines, rng.uniform(0.04, 0.075), size)


def styled_digits(config: StyledDigitsConfig):
    """uint8 images [N, S, S, 1], int32 labels [N], tags [N] (``"7-crossed"``, ``"3"``)."""
    table = config.style_table()
    images = np.zeros((config.size, config.image_size, config.image_size, 1), np.uint8)
    labels = np.zeros(config.size, np.int32)
    tags = []
    for i in range(config.size):
        rng = np.random.default_rng([config.seed, i])
        digit = int(rng.integers(10))
        style = "plain"
        if digit in table:
            names, rates = zip(*table[digit])
            style = names[rng.choice(len(names), p=np.asarray(rates) / np.sum(rates))]
        images[i, :, :, 0] = np.round(draw(digit, style, rng, config.image_size) * 255)
        labels[i] = digit
        tags.append(f"{digit}-{style}" if digit in table else str(digit))
    return images, labels, np.asarray(tags)


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR)) for x in images])


def sklearn_digits(image_size: int = 32):
    """scikit-learn's bundled digits (no download), resized: uint8 [1797, S, S, 1], labels, tags."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DissectError("scikit-learn is not installed: pip install scikit-learn (its digits are bundled)") from None
    d = load_digits()
    images = np.round(d.images / 16.0 * 255).astype(np.uint8)
    images = _resize(images, image_size)[..., None]
    return images, d.target.astype(np.int32), d.target.astype(str)


def tfds_mnist(data_dir: str, split: str = "train", image_size: int = 32):
    """MNIST from a prepared TFDS ``data_dir`` (array_record, read without TensorFlow)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DissectError("tensorflow-datasets is not installed: pip install tensorflow-datasets") from None
    try:
        source = tfds.data_source("mnist", split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for "not prepared here"
        raise DissectError(
            f"MNIST is not prepared under {data_dir!r} ({type(e).__name__}: {first_line(e)}). "
            "Prepare it once on a machine with network access (tfds build mnist --file_format=array_record "
            f"--data_dir {data_dir}) and copy the folder; dissectjax downloads nothing."
        ) from None
    rows = [source[i] for i in range(len(source))]
    images = np.stack([r["image"][..., 0] for r in rows])
    labels = np.asarray([r["label"] for r in rows], np.int32)
    if image_size != images.shape[1]:
        images = _resize(images, image_size)
    return images[..., None], labels, labels.astype(str)


DIGIT_SOURCES = ("styled", "sklearn", "mnist")
TEST_SEED_OFFSET = 1000  # styled test digits are drawn with seed + 1000, apart from any training seed


def digit_set(source: str, size: int, seed: int, data_dir: str | None = None, crossed: float | None = None,
              split: str = "train"):  # fmt: skip
    """(images uint8 [N, 32, 32, 1], labels int [N], style tags [N]) of a digit source.

    ``styled``: generated (``size`` digits; the ``test`` split draws from ``seed +
    TEST_SEED_OFFSET``); ``crossed`` sets the share of crossed 7s (hooked 7s stay at 0.2);
    ``sklearn``: scikit-learn's 1,797 digits; ``mnist``: TFDS MNIST prepared in ``data_dir``.
    """
    if source == "styled":
        config = StyledDigitsConfig(size=size, seed=seed + (TEST_SEED_OFFSET if split == "test" else 0))
        if crossed is not None:
            config = with_rates(config, 7, {"plain": 0.8 - crossed, "crossed": crossed, "hook": 0.2})
        return styled_digits(config)
    if source == "sklearn":
        return sklearn_digits()
    if source == "mnist":
        if not data_dir:
            raise DissectError("MNIST needs the TFDS data_dir where it is prepared (a data directory)")
        return tfds_mnist(data_dir, split)
    raise DissectError(f"unknown digit source {source!r}; expected {', '.join(DIGIT_SOURCES)}")
