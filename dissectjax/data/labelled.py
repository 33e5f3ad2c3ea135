"""Labelled image sets: images with the class a checkpoint should output, to measure a
classifier per class (the surgery commands ``ablate``, ``match``, ``transplant`` and the app).

    spec --open_labelled(spec, split, count, input_shape, num_classes)--> LabelledImages
          images uint8 [N, H, W, C] at the model's input, labels int32 [N], class names

Specs:

    synthetic          the generated scenes (:mod:`dissectjax.data.splits`: the ``rank`` and
                       ``eval`` scene splits, seeds 200 and 201); 12 classes, RGB
    shifted:SCENE:COLOR[:P]
                       the same scenes with a planted cue decorrelated from the class: a
                       COLOR square on every scene with probability P (default 0.5), the
                       shifted set that shows a network trained with the shortcut SCENE:COLOR
                       (``dissectjax train --shortcut``) taking it
    digits             styled digits (:func:`dissectjax.data.digits.digit_set`), classes
                       "0".."9", drawn with seed 200 (``rank``) or 201 (``eval``)
    DIR                class folders, DIR/<class>/<images> (.jpg .jpeg .png .bmp .webp, any
                       case; the ImageNet / Places365 validation layout)
    tfds:NAME[:SPLIT]  a prepared TFDS classification dataset (an Image and a ClassLabel
                       feature) in ``data_dir``, read without TensorFlow

Splits. ``rank`` chooses units, ``eval`` measures an edit; they never share an image. The
generated sets draw each split from its own seed, and ``count`` images are generated
(:data:`GENERATED_COUNT` when ``count`` is None). For class folders and TFDS datasets,
within each class the examples are taken in a fixed order (sorted relative file path;
record order), and the k-th (k = 0, 1, ...) goes to ``eval`` if k is even and to ``rank``
if k is odd: each split holds about half of every class. The chosen examples come
round-robin over classes in class order (the first of each class, then the second of
each, ...), and ``count`` keeps the first ``count`` of them (None: all), so a small count
still covers every class:

>>> split_order(np.array([0, 0, 1, 1, 1, 0]), "eval"), split_order(np.array([0, 0, 1, 1, 1, 0]), "rank")
(array([0, 2, 5, 4]), array([1, 3]))

Class folders. The class order, and so the label numbers, is the order of the lines of
DIR/classes.txt when present (one class folder name per line, in the checkpoint's output
order; a class may have no folder, a folder not listed is an error), else the sorted
folder names. Folders and files whose names start with "." are ignored; other files than
images are ignored; images in subfolders of a class folder belong to the class.

TFDS. The image feature is ``image`` (else the first Image feature), the label feature is
``label`` (else the first ClassLabel feature); class names are the ClassLabel's names.
Without a SPLIT, the dataset's ``validation`` split is read if it has one, else ``test``,
else ``train``. Examples without a label (-1, as in some test splits) are skipped.

Preprocessing, the usual evaluation transform: the image is converted to RGB (or grayscale
"L" when the model takes one channel), its shorter side resized to the target (PIL
bilinear, antialiased when shrinking), and the center cropped to (H, W). Pixel values stay
uint8; the model normalizes itself.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from dissectjax.data.tfds_probe import default_tfds_dir, prepared_builder
from dissectjax.errors import DissectError, first_line

LABELLED_SPLITS = ("rank", "eval")  # rank: choose units; eval: measure (disjoint)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # compared lower-case
CLASSES_FILE = "classes.txt"
GENERATED_COUNT = 1000  # synthetic scenes or digits generated when count is None
DIGIT_SEEDS = {"rank": 200, "eval": 201}  # styled digits' seeds (training uses small seeds, tests seed + 1000)
TFDS_DEFAULT_SPLITS = ("validation", "test", "train")  # the first one a dataset has is read
DECODE_WORKERS = 4  # threads decoding images (PIL releases the GIL while decoding)
CHUNK = 256  # images fetched and decoded at a time

Progress = Callable[..., Iterable]  # progress(iterable, total=, desc=, ...) -> the same items
Payload = str | bytes | np.ndarray  # a file path, encoded image bytes, or pixels [h, w(, c)]


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledImages:
    """A labelled split at a model's input; the arrays are read-only."""

    images: np.ndarray  # uint8 [N, H, W, C] at the model's input size and channel count
    labels: np.ndarray  # int32 [N], class indices of the checkpoint's output
    class_names: tuple[str, ...]  # one per output class of the checkpoint (len == num_classes)
    source: str  # the spec, for summaries ("synthetic", "/data/val", "tfds:imagenette:validation")
    split: str  # "rank" or "eval"

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        """int64 [num_classes]: images per class."""
        return np.bincount(self.labels, minlength=len(self.class_names))

    def summary(self) -> str:
        """One line for logs, e.g. ``"eval: 40 images of 20 classes from /data/val (20 with images)"``."""
        present = int(np.count_nonzero(self.class_counts()))
        return (f"{self.split}: {len(self)} images of {len(self.class_names)} classes from {self.source} "
                f"({present} with images)")  # fmt: skip


def open_labelled(
    spec: str,
    split: str,
    count: int | None,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    data_dir: str | None = None,
    progress: Progress | None = None,
) -> LabelledImages:
    """The ``split`` (``rank`` or ``eval``) of the labelled set ``spec`` (see the module docstring).

    ``count``: at most this many images (None: all; generated sets: :data:`GENERATED_COUNT`).
    ``input_shape`` (H, W, C), C 1 or 3, and ``num_classes`` are the checkpoint's; the set must
    have exactly ``num_classes`` classes. ``data_dir`` is the TFDS data directory (default
    :func:`default_tfds_dir`); ``progress`` wraps the decoding of images (e.g. a tqdm bar).
    Bad input of any kind is a :class:`DissectError` saying what to do.
    """
    check_split(split)
    if count is not None and count <= 0:
        raise DissectError(f"the number of labelled images must be a positive integer, got {count}")
    if num_classes < 1:
        raise DissectError(f"the checkpoint must have at least one output class, got {num_classes}")
    shape = input_size(input_shape)
    progress = progress or (lambda iterable, **_: iterable)
    if spec == "synthetic":
        return _synthetic(split, count, shape, num_classes)
    if spec.startswith("shifted:"):
        return _synthetic(split, count, shape, num_classes, shifted_cue(spec))
    if spec == "digits":
        return _digits(split, count, shape, num_classes)
    if spec.startswith("tfds:"):
        return _tfds(spec, split, count, shape, num_classes, data_dir or default_tfds_dir(), progress)
    if os.path.isdir(spec):
        return _folders(spec, split, count, shape, num_classes, progress)
    raise DissectError(
        f"labelled data {spec!r} is neither 'synthetic', 'shifted:SCENE:COLOR[:P]', 'digits', 'tfds:NAME[:SPLIT]' "
        "nor an existing directory of class folders (DIR/<class>/<image files>)"
    )


def input_size(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """(H, W, C) as ints, checked: positive sizes, 1 (grayscale) or 3 (RGB) channels."""
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise DissectError(f"the model's input shape must be (height, width, channels), got {tuple(input_shape)}")
    height, width, channels = (int(x) for x in input_shape)
    if channels not in (1, 3):
        raise DissectError(
            f"the model takes {channels}-channel images; labelled images are RGB (3 channels) or grayscale (1)"
        )
    return height, width, channels


# ---- the split rule ---------------------------------------------------------------------
def check_split(split: str) -> str:
    """``split`` if it is one of :data:`LABELLED_SPLITS`, else a DissectError listing them."""
    if split not in LABELLED_SPLITS:
        raise DissectError(f"unknown labelled split {split!r}; splits: {', '.join(LABELLED_SPLITS)}")
    return split


def class_positions(labels: np.ndarray) -> np.ndarray:
    """int [N] -> int64 [N]: k of each example, the number of earlier examples of its class.

    >>> class_positions(np.array([2, 0, 2, 2, 0]))
    array([0, 0, 1, 2, 1])
    """
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    grouped = labels[order]
    positions = np.empty(len(labels), np.int64)
    positions[order] = np.arange(len(labels)) - np.searchsorted(grouped, grouped, side="left")
    return positions


def split_order(labels: np.ndarray, split: str, count: int | None = None) -> np.ndarray:
    """Indices into ``labels`` (int [N], in the fixed example order; negative = unlabelled,
    skipped) of ``split``'s examples: even k to ``eval``, odd k to ``rank``, round-robin over
    classes in class order, at most ``count`` (None: all). int64 [M]."""
    parity = 0 if check_split(split) == "eval" else 1  # eval: k even, rank: k odd
    labels = np.asarray(labels)
    labelled = np.flatnonzero(labels >= 0)
    k = class_positions(labels[labelled])
    mine = np.flatnonzero(k % 2 == parity)
    round_robin = np.lexsort((labels[labelled][mine], k[mine] // 2))  # by turn, then class
    return labelled[mine[round_robin]][:count]


# ---- images -----------------------------------------------------------------------------
def fit_image(image: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
    """A PIL image -> uint8 [H, W, C] for ``shape`` (H, W, C): RGB or grayscale, the shorter
    side resized (bilinear, antialiased) so the image covers H x W, the center cropped."""
    height, width, channels = shape
    mode = "L" if channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    w, h = image.size
    scale = max(height / h, width / w)
    size = (max(width, round(w * scale)), max(height, round(h * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = round((size[0] - width) / 2), round((size[1] - height) / 2)
    image = image.crop((left, top, left + width, top + height))
    return np.asarray(image, np.uint8).reshape(height, width, channels)


def decode_image(name: str, payload: Payload, shape: tuple[int, int, int]) -> np.ndarray:
    """One image (a file, encoded bytes, or pixels) -> uint8 [H, W, C] (:func:`fit_image`);
    a file or bytes PIL cannot read is a DissectError naming ``name``."""
    if isinstance(payload, np.ndarray):
        pixels = payload[..., 0] if payload.ndim == 3 and payload.shape[-1] == 1 else payload
        return fit_image(Image.fromarray(np.asarray(pixels, np.uint8)), shape)
    try:
        with Image.open(payload if isinstance(payload, str) else io.BytesIO(payload)) as file:
            image = file.convert("L" if shape[2] == 1 else "RGB")  # reads every pixel
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise DissectError(
            f"{name}: not a readable image ({type(e).__name__}: {first_line(e)}); replace or remove it"
        ) from None
    return fit_image(image, shape)


def decode_images(
    chunks: Iterable[Sequence[tuple[str, Payload]]], total: int, shape: tuple[int, int, int], progress: Progress
) -> np.ndarray:
    """uint8 [total, H, W, C]: the (name, payload) items of ``chunks``, decoded by a few threads,
    in order; a chunk is fetched only when the one before is decoded."""
    from concurrent.futures import ThreadPoolExecutor

    images = np.empty((total, *shape), np.uint8)
    decode = functools.partial(_decode_item, shape=shape)
    with ThreadPoolExecutor(max_workers=min(DECODE_WORKERS, os.cpu_count() or 1)) as pool:
        decoded = (image for chunk in chunks for image in pool.map(decode, chunk))
        n = 0
        for n, image in enumerate(progress(decoded, total=total, desc="decoding images", unit="image"), 1):
            images[n - 1] = image
    assert n == total, (n, total)
    return images


def _decode_item(item: tuple[str, Payload], shape: tuple[int, int, int]) -> np.ndarray:
    return decode_image(*item, shape)


def fit_arrays(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 [N, h, w, c] -> [N, H, W, C] (:func:`fit_image` per image; unchanged when they fit)."""
    if images.shape[1:] == shape:
        return images
    return np.stack([decode_image(f"image {i}", x, shape) for i, x in enumerate(images)])


def _chunks(items: Sequence, size: int = CHUNK) -> Iterator[Sequence]:
    """``items`` in consecutive pieces of at most ``size``."""
    return (items[i : i + size] for i in range(0, len(items), size))


def _labelled(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], source: str, split: str):
    """A LabelledImages over read-only arrays."""
    images, labels = np.asarray(images, np.uint8), np.asarray(labels, np.int32)
    images.setflags(write=False)
    labels.setflags(write=False)
    return LabelledImages(images, labels, tuple(class_names), source, split)


def _check_classes(source: str, names: Sequence[str], num_classes: int, advice: str) -> None:
    if len(names) != num_classes:
        raise DissectError(f"{source} has {len(names)} classes but the checkpoint has {num_classes} outputs; {advice}")


def _nonempty(order: np.ndarray, source: str, split: str, why: str) -> np.ndarray:
    if not len(order):
        raise DissectError(f"{source}: the {split} split holds no images ({why})")
    return order


# ---- generated sets ---------------------------------------------------------------------
def shortcut_spec(text: str, flag: str):
    """``SCENE:COLOR`` -> the planted :class:`~dissectjax.data.synthetic.Shortcut` (training probabilities)."""
    from dissectjax.data.synthetic import Shortcut

    parts = text.split(":")
    if len(parts) != 2:
        raise DissectError(f"{flag} takes SCENE:COLOR (e.g. playroom:pink), got {text!r}")
    return Shortcut(scene=parts[0], color=parts[1])


def shifted_cue(spec: str):
    """``shifted:SCENE:COLOR[:P]`` -> the shortcut decorrelated from the class at probability P."""
    parts = spec.split(":")[1:]
    if len(parts) not in (2, 3):
        raise DissectError(f"labelled data {spec!r}: expected shifted:SCENE:COLOR[:P], e.g. shifted:playroom:pink")
    try:
        p = float(parts[2]) if len(parts) == 3 else 0.5
    except ValueError:
        raise DissectError(f"labelled data {spec!r}: P must be a probability, got {parts[2]!r}") from None
    return shortcut_spec(":".join(parts[:2]), "shifted:").decorrelated(p)


def _synthetic(split: str, count: int | None, shape, num_classes: int, shortcut=None) -> LabelledImages:
    """Scenes of the ``split`` scene split, generated square at the larger input side (with a
    planted ``shortcut`` cue if given)."""
    from dissectjax.data.splits import SCENE_CLASSES, scene_images

    _check_classes("synthetic", SCENE_CLASSES, num_classes, "the synthetic scenes measure scene classifiers")
    if shape[2] != 3:
        raise DissectError("the synthetic scenes are RGB but the model takes 1 channel; use digits or a directory")
    images, labels = scene_images(count or GENERATED_COUNT, split, image_size=max(shape[:2]), shortcut=shortcut)
    source = "synthetic" if shortcut is None else f"shifted:{shortcut.scene}:{shortcut.color}:{shortcut.with_class:g}"
    return _labelled(fit_arrays(images, shape), labels, SCENE_CLASSES, source, split)


def _digits(split: str, count: int | None, shape, num_classes: int) -> LabelledImages:
    """Styled digits (32 x 32, fitted to the input) drawn from the split's seed."""
    from dissectjax.data.digits import digit_set

    names = tuple(str(d) for d in range(10))
    _check_classes("digits", names, num_classes, "the digits measure digit classifiers (LeNet-5)")
    images, labels, _ = digit_set("styled", count or GENERATED_COUNT, DIGIT_SEEDS[split])
    return _labelled(fit_arrays(images, shape), labels, names, "digits", split)


# ---- class folders ----------------------------------------------------------------------
def class_folder_names(root: str) -> list[str]:
    """The sorted names of ``root``'s subfolders (hidden ones, starting with ".", left out)."""
    with os.scandir(root) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def folder_classes(root: str, folders: Sequence[str], num_classes: int) -> tuple[str, ...]:
    """The class names in output order: DIR/classes.txt's lines, else the sorted folders; checked
    against the folders and ``num_classes``."""
    listing = os.path.join(root, CLASSES_FILE)
    if not os.path.isfile(listing):
        if len(folders) != num_classes:
            raise DissectError(
                f"{root} has {len(folders)} class folders but the checkpoint has {num_classes} outputs; give a "
                f"{CLASSES_FILE} listing the checkpoint's classes in order, or a checkpoint with {len(folders)} classes"
            )
        return tuple(folders)
    try:
        with open(listing, encoding="utf-8") as f:
            names = tuple(line.strip() for line in f if line.strip())
    except UnicodeDecodeError:
        raise DissectError(f"{listing} is not UTF-8 text; list one class folder name per line") from None
    repeated = sorted(n for n, times in collections.Counter(names).items() if times > 1)
    if repeated:
        raise DissectError(f"{listing} lists {', '.join(repeated[:5])} more than once; list each class once")
    listed = set(names)
    unlisted = [f for f in folders if f not in listed]
    if unlisted:
        raise DissectError(
            f"{listing} does not list the class folder(s) {', '.join(unlisted[:5])}"
            f"{' ...' if len(unlisted) > 5 else ''}; list every class of the checkpoint, one folder name per line"
        )
    if len(names) != num_classes:
        raise DissectError(
            f"{listing} lists {len(names)} classes but the checkpoint has {num_classes} outputs; list the "
            "checkpoint's classes, one per line in its output order"
        )
    return names


def image_files(folder: str) -> list[str]:
    """The image files under ``folder`` (recursively; hidden names left out), by sorted relative path."""
    found = []
    for here, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(here, folder)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES]  # fmt: skip
    return [os.path.join(folder, f) for f in sorted(found, key=lambda p: p.replace(os.sep, "/"))]


def _folders(root: str, split: str, count: int | None, shape, num_classes: int, progress: Progress):
    """DIR/<class>/<images> (see the module docstring)."""
    source = os.path.abspath(root)
    folders = class_folder_names(root)
    if not folders:
        raise DissectError(
            f"{source} holds no class folders; expected DIR/<class>/<image files> (one folder per class, "
            "as ImageNet's validation set)"
        )
    class_names = folder_classes(source, folders, num_classes)
    label_of = {name: c for c, name in enumerate(class_names)}
    paths, labels = [], []
    for folder in folders:
        files = image_files(os.path.join(source, folder))
        if not files:
            raise DissectError(
                f"class folder {os.path.join(source, folder)} holds no images ({' '.join(IMAGE_SUFFIXES)}); "
                "add its images, or remove it (and list the checkpoint's classes in classes.txt)"
            )
        paths += files
        labels += [label_of[folder]] * len(files)
    order = split_order(np.array(labels), split, count)
    _nonempty(order, source, split, "each class's 2nd, 4th, ... image is a rank image: give classes 2 images or more")
    chunks = _chunks([(paths[i], paths[i]) for i in order])
    images = decode_images(chunks, len(order), shape, progress)
    return _labelled(images, np.array(labels)[order], class_names, source, split)


# ---- TFDS -------------------------------------------------------------------------------
def tfds_features(features, name: str) -> tuple[str, str, tuple[str, ...]]:
    """(image feature, label feature, class names) of a TFDS classification dataset's features."""
    import tensorflow_datasets as tfds

    def pick(kind: type, preferred: str) -> str | None:
        keys = [k for k, f in features.items() if isinstance(f, kind)]
        return preferred if preferred in keys else next(iter(keys), None)

    image, label = pick(tfds.features.Image, "image"), pick(tfds.features.ClassLabel, "label")
    if image is None or label is None:
        raise DissectError(
            f"TFDS dataset {name!r} is not an image classification dataset: it needs an Image and a ClassLabel "
            f"feature (features: {', '.join(features.keys())})"
        )
    return image, label, tuple(features[label].names)


def _tfds(spec: str, split: str, count: int | None, shape, num_classes: int, data_dir: str, progress: Progress):
    """``tfds:NAME[:SPLIT]`` prepared under ``data_dir`` (see the module docstring)."""
    name, _, tfds_split = spec[len("tfds:") :].partition(":")
    builder = prepared_builder(name, data_dir)
    import tensorflow_datasets as tfds  # prepared_builder found it installed

    splits = list(builder.info.splits)
    tfds_split = tfds_split or next((s for s in TFDS_DEFAULT_SPLITS if s in splits), "")
    if tfds_split.partition("[")[0] not in splits:
        raise DissectError(f"TFDS dataset {name!r} has no split {tfds_split!r}; splits: {', '.join(splits)}")
    source = f"tfds:{name}:{tfds_split}"
    image_key, label_key, class_names = tfds_features(builder.info.features, name)
    _check_classes(source, class_names, num_classes, "give a dataset with the checkpoint's classes, in its order")
    skip = {
        k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items() if isinstance(f, tfds.features.Image)
    }
    try:
        records = builder.as_data_source(split=tfds_split, decoders=skip)
    except Exception as e:
        raise DissectError(
            f"{source} cannot be read without TensorFlow ({type(e).__name__}: {first_line(e)}); "
            "prepare it with --file_format=array_record"
        ) from None
    labels = np.concatenate([[r[label_key] for r in records.__getitems__(list(part))]
                             for part in _chunks(range(len(records)), 4 * CHUNK)] or [[]]).astype(np.int64)  # fmt: skip
    order = _nonempty(split_order(labels, split, count), source, split, "too few labelled records")
    chunks = ([(f"{source} record {i}", r[image_key]) for i, r in zip(part, records.__getitems__(part))]
              for part in _chunks([int(i) for i in order]))  # fmt: skip
    images = decode_images(chunks, len(order), shape, progress)
    return _labelled(images, labels[order], class_names, source, split)
