"""Reader and writer of the Broden dataset format (docs/ARCHITECTURE.md, Probe datasets).

A directory holds ``index.csv`` (``image,split,ih,iw,sh,sw,<categories>``), ``label.csv``,
``category.csv``, optional ``c_<category>.csv``, and ``images/`` with the pictures and the
segmentation PNGs (label number = R + 256 * G). A pixel-level cell names one or more PNGs
joined by ``;``; an image-level cell holds label numbers joined by ``;``.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from dissectjax.data.concepts import Concepts
from dissectjax.data.probe import load_rows
from dissectjax.errors import DissectError, one_line

INDEX_FIELDS = ("image", "split", "ih", "iw", "sh", "sw")


@dataclasses.dataclass
class BrodenRow:
    """One image with its raw labels (Broden label numbers, 0 = unlabelled).

    image: uint8 [ih, iw, 3] or None when not loaded.
    pixel: category -> list of int32 [sh, sw] label maps (one per PNG in the cell).
    image_level: category -> list of label numbers.
    """

    name: str
    split: str
    image_size: tuple[int, int]
    label_size: tuple[int, int]
    pixel: dict[str, list[np.ndarray]]
    image_level: dict[str, list[int]]
    image: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class LabelInfo:
    number: int
    name: str
    category: str  # e.g. "object(30);part(2)"


def encode_label_png(labels: np.ndarray) -> np.ndarray:
    """int [h, w] label numbers -> uint8 [h, w, 3] with number = R + 256 * G."""
    labels = np.asarray(labels)
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= 1 << 16:
        raise ValueError("label numbers must be in [0, 65535] to fit R + 256 * G")
    rgb = np.zeros((*labels.shape, 3), np.uint8)
    rgb[..., 0] = labels & 0xFF
    rgb[..., 1] = labels >> 8
    return rgb


def _label_numbers(rgb: np.ndarray) -> np.ndarray:
    """uint8 [h, w, 3] -> int32 [h, w] label numbers (R + 256 * G)."""
    rgb = np.asarray(rgb)
    return rgb[..., 0] + 256 * rgb[..., 1].astype(np.int32)


def decode_label_png(path: str) -> np.ndarray:
    """A segmentation PNG -> int32 [h, w] label numbers (R + 256 * G)."""
    return _label_numbers(np.asarray(Image.open(path).convert("RGB")))


def primary_category(field: str) -> str:
    """``"object(30);part(2)"`` -> ``"object"``: the category with the largest count."""
    counted = [(int(n), c) for c, n in re.findall(r"([\w-]+)\((\d+)\)", field)]
    if counted:
        return max(counted)[1]
    return field.strip()


def _read_csv(path: str) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a Broden CSV table; a file that is not UTF-8 text in CSV form is a
    DissectError naming it (a UTF-8 byte order mark is accepted)."""
    if not os.path.isfile(path):
        raise DissectError(f"{path} is missing: a Broden directory needs index.csv and label.csv")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)
    except UnicodeDecodeError as e:
        raise DissectError(f"{path}: byte {e.start} is not UTF-8 text ({e.reason}); expected a CSV table in UTF-8: "
                           "convert the file to UTF-8") from None  # fmt: skip
    except csv.Error as e:
        raise DissectError(f"{path}: malformed CSV ({one_line(e)}); expected a CSV table with a header row") from None
    except OSError as e:
        raise DissectError(f"{path}: cannot read it ({one_line(e)})") from None


def _hw(size: Sequence[int]) -> str:
    """``(h, w)`` as ``"HxW"`` (height first, as index.csv gives sizes)."""
    return "x".join(str(int(x)) for x in size)


def _cell_parts(cell: str | None) -> list[str]:
    return [p for p in (cell or "").strip().split(";") if p]


class BrodenDataset:
    """A Broden-format directory, read lazily one row at a time.

    ``len(ds)`` rows; ``ds.concepts`` the vocabulary (concept columns = label numbers in
    ascending order); ``ds.row(i)`` the raw labels; ``ds.example(i)`` the labels as concept
    indices laid out in a fixed number of layers (see :mod:`dissectjax.data.probe`).
    """

    decodes_files = True  # rows are decoded from files: worth decoding in other processes

    def __init__(self, root: str, split: str | None = None, skip_missing: bool = False):
        """``split``: only rows of that index.csv split ("all" or None: every row).
        ``skip_missing``: drop rows whose image or segmentation files are missing, listed in
        ``self.skipped`` as (index.csv line, missing path); without it a missing file is an
        error naming its row when the row is read."""
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise DissectError(f"dataset directory {self.root!r} does not exist")
        fields, rows = _read_csv(os.path.join(self.root, "index.csv"))
        missing = [f for f in INDEX_FIELDS if f not in fields]
        if missing or fields[: len(INDEX_FIELDS)] != list(INDEX_FIELDS):
            raise DissectError(
                f"{self.root}/index.csv must start with columns {','.join(INDEX_FIELDS)}; got {','.join(fields[:6])}"
            )
        for line, row in enumerate(rows, start=2):
            row["_line"] = line  # where errors point to, whatever rows a split keeps
        self.categories: tuple[str, ...] = tuple(fields[len(INDEX_FIELDS) :])
        if not self.categories:
            raise DissectError(f"{self.root}/index.csv has no category columns after {','.join(INDEX_FIELDS)}")
        if split is not None and split != "all":
            rows = [r for r in rows if r["split"] == split]
        self.skipped: list[tuple[int, str]] = []
        if skip_missing:
            rows, self.skipped = self._present(rows)
        if not rows:
            raise DissectError(f"{self.root}/index.csv has no rows" + (f" in split {split!r}" if split else ""))
        self._rows = rows
        self._sizes = self._parse_sizes(rows)
        self.label_info = self._read_labels()
        self.concepts = self._make_concepts()
        self._lookup = self.concepts.lookup_table()
        # every number a label PNG can hold (R + 256 G) -> concept index; -1 for 0, -2 unknown
        self._pixel_lookup = np.full(1 << 16, -2, np.int32)
        known = self._lookup[: 1 << 16]
        self._pixel_lookup[: len(known)] = np.where(known >= 0, known, -2)
        self._pixel_lookup[0] = -1
        self.pixel_layers, self.max_image_labels = self._layout()

    # ---- metadata ---------------------------------------------------------------------
    def _present(self, rows: list[dict]) -> tuple[list[dict], list[tuple[int, str]]]:
        """(rows whose files all exist, [(index.csv line, first missing path)] of the others)."""
        kept, skipped = [], []
        for row in rows:
            names = [row["image"]] + [
                part for c in self.categories for part in _cell_parts(row[c]) if not part.isdigit()
            ]  # fmt: skip
            missing = next((self._path(n) for n in names if not os.path.isfile(self._path(n))), None)
            if missing is None:
                kept.append(row)
            else:
                skipped.append((int(row["_line"]), missing))
        return kept, skipped

    def _parse_sizes(self, rows) -> np.ndarray:
        sizes = np.zeros((len(rows), 4), np.int64)
        for i, row in enumerate(rows):
            try:
                sizes[i] = [int(row[k]) for k in ("ih", "iw", "sh", "sw")]
            except (TypeError, ValueError):
                raise DissectError(
                    f"{self.root}/index.csv line {row['_line']} ({row.get('image')}): ih,iw,sh,sw must be integers"
                ) from None
        if np.any(sizes <= 0):
            bad = int(np.argmax(np.any(sizes <= 0, axis=1)))
            raise DissectError(f"{self.root}/index.csv line {rows[bad]['_line']}: sizes must be positive")
        return sizes

    def _read_labels(self) -> list[LabelInfo]:
        fields, rows = _read_csv(os.path.join(self.root, "label.csv"))
        for f in ("number", "name", "category"):
            if f not in fields:
                raise DissectError(f"{self.root}/label.csv lacks the column {f!r}")
        labels = []
        for i, row in enumerate(rows):
            if row["number"] in ("-", "0", ""):
                continue
            try:
                labels.append(LabelInfo(int(row["number"]), row["name"], row["category"]))
            except ValueError:
                raise DissectError(
                    f"{self.root}/label.csv row {i + 2}: number {row['number']!r} is not an integer"
                ) from None
        if not labels:
            raise DissectError(f"{self.root}/label.csv lists no labels")
        return sorted(labels, key=lambda label: label.number)

    def _make_concepts(self) -> Concepts:
        cat_index = {c: k for k, c in enumerate(self.categories)}
        category = []
        for label in self.label_info:
            primary = primary_category(label.category)
            if primary not in cat_index:
                raise DissectError(
                    f"{self.root}/label.csv: label {label.number} ({label.name}) has category {primary!r}, "
                    f"which is not a column of index.csv ({', '.join(self.categories)})"
                )
            category.append(cat_index[primary])
        numbers = np.array([label.number for label in self.label_info], np.int64)
        if len(np.unique(numbers)) != len(numbers):
            raise DissectError(f"{self.root}/label.csv lists a label number twice")
        return Concepts(
            numbers, tuple(label.name for label in self.label_info), np.array(category, np.int32), self.categories
        )

    def _layout(self) -> tuple[dict[str, int], int]:
        """Label layers per pixel-level category, and the most image-level labels of a row."""
        layers = {c: 0 for c in self.categories}
        most_image = 0
        for row in self._rows:
            n_image = 0
            for c in self.categories:
                parts = _cell_parts(row[c])
                if parts and all(p.isdigit() for p in parts):
                    n_image += len(parts)
                elif parts:
                    layers[c] = max(layers[c], len(parts))
            most_image = max(most_image, n_image)
        return {c: n for c, n in layers.items() if n}, most_image

    # ---- rows -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def image_size(self, i: int) -> tuple[int, int]:
        return int(self._sizes[i, 0]), int(self._sizes[i, 1])

    def label_size(self, i: int) -> tuple[int, int]:
        return int(self._sizes[i, 2]), int(self._sizes[i, 3])

    @property
    def shapes(self) -> np.ndarray:
        """int [N, 4]: ih, iw, sh, sw of every row."""
        return self._sizes

    @property
    def label_layers(self) -> int:
        """Pixel label layers of a row: the most PNGs of each pixel-level category, summed."""
        return sum(self.pixel_layers.values())

    def labels(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row i as concept indices, as stored (repeats kept; the counting rules decide what they
        count): pixel int32 [L, sh, sw], image int32 [M] (-1 = none)."""
        row = self.row(i)
        pixel = np.full((self.label_layers, *row.label_size), -1, np.int32)
        start = 0
        for category, count in self.pixel_layers.items():
            for j, m in enumerate(row.pixel.get(category, [])):
                pixel[start + j] = self._pixel_indices(m, i)
            start += count
        image = np.full(self.max_image_labels, -1, np.int32)
        numbers = [n for c in self.categories for n in row.image_level.get(c, [])]
        if numbers:
            image[: len(numbers)] = self.concept_indices(np.array(numbers), i)
        return pixel, image

    def load_batch(self, rows: np.ndarray, images: bool, labels: bool):
        return load_rows(self, rows, images, labels)

    def _path(self, name: str) -> str:
        return os.path.join(self.root, "images", name)

    def _where(self, i: int) -> str:
        return f"{self.root}/index.csv line {self._rows[i]['_line']} ({self._rows[i]['image']})"

    def _picture(self, i: int, name: str, what: str, size: tuple[int, int]) -> np.ndarray:
        """uint8 [h, w, 3] of the picture ``name`` (under images/) of row i, the row's ``what``.

        Its header is read first: a picture that declares another size than ``size`` (h, w, as
        index.csv gives it), or more pixels than PIL's decompression-bomb limit, is refused
        before its pixels are decoded.
        """
        path = self._path(name)
        where = f"{self._where(i)}: {what} {path}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                picture = Image.open(path)
        except FileNotFoundError:
            raise DissectError(f"{where} is missing") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DissectError(f"{where} declares too many pixels ({one_line(e)}); expected a picture of "
                               f"{_hw(size)} pixels, as index.csv says") from None  # fmt: skip
        except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
            raise DissectError(f"{where}: cannot read it ({one_line(e)}); expected a PNG or JPEG picture") from None
        with picture:
            declared = (picture.height, picture.width)
            if declared != tuple(size):
                raise DissectError(f"{where} is {_hw(declared)} pixels, index.csv says {_hw(size)}; expected them to "
                                   "agree: fix the picture or the row's sizes")  # fmt: skip
            try:
                return np.asarray(picture.convert("RGB"))
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                raise DissectError(f"{where}: cannot decode it ({one_line(e)}); expected an intact PNG or JPEG "
                                   "picture") from None  # fmt: skip

    def load_image(self, i: int) -> np.ndarray:
        """uint8 [ih, iw, 3]."""
        return self._picture(i, self._rows[i]["image"], "image file", self.image_size(i))

    def split_of(self, i: int) -> str:
        """The ``split`` column of row ``i`` ('' where index.csv has none)."""
        return self._rows[i]["split"]

    def row(self, i: int, with_image: bool = False) -> BrodenRow:
        """The raw labels of row i (and its image when asked)."""
        raw = self._rows[i]
        size = self.label_size(i)
        pixel, image_level = {}, {}
        for c in self.categories:
            parts = _cell_parts(raw[c])
            if parts and all(p.isdigit() for p in parts):
                image_level[c] = [int(p) for p in parts]
            elif parts:
                pixel[c] = [_label_numbers(self._picture(i, name, "segmentation", size)) for name in parts]
        image = self.load_image(i) if with_image else None
        return BrodenRow(raw["image"], raw["split"], self.image_size(i), size, pixel, image_level, image)

    def _pixel_indices(self, numbers: np.ndarray, i: int) -> np.ndarray:
        """A label map's numbers (int [h, w] in [0, 65535], as :func:`_label_numbers` decodes
        them) -> concept indices, as :meth:`concept_indices` gives them, by one table lookup."""
        out = self._pixel_lookup[numbers]
        if out.min(initial=0) < -1:
            return self.concept_indices(numbers, i)  # raises, naming the number
        return out

    def concept_indices(self, numbers: np.ndarray, i: int) -> np.ndarray:
        """Label numbers -> concept indices (-1 for 0); unknown numbers are an error."""
        numbers = np.asarray(numbers, np.int64)
        known = (numbers >= 0) & (numbers < len(self._lookup))
        out = np.where(known, self._lookup[np.clip(numbers, 0, len(self._lookup) - 1)], -1)
        unknown = (numbers != 0) & (out < 0)
        if np.any(unknown):
            raise DissectError(
                f"{self._where(i)}: label number {int(numbers[unknown].flat[0])} is not listed in label.csv"
            )
        return out.astype(np.int32)


def generate_once(root: str, write: Callable[[str], None], marker: str = "index.csv") -> str:
    """``root``, made by ``write(path)`` on first use (the directory ``path`` must not exist yet):
    written under a temporary name beside ``root`` and renamed into place, so an interrupted
    generation never leaves a half-written set behind; ``root/marker`` says it is there."""
    if os.path.isfile(os.path.join(root, marker)):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}-", dir=parent)
    try:
        target = os.path.join(tmp, "set")
        write(target)
        try:
            os.rename(target, root)
        except OSError:
            if not os.path.isfile(os.path.join(root, marker)):  # lost a race to a twin? fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_broden(
    root: str,
    categories: Sequence[str],
    labels: Sequence[LabelInfo],
    rows: Iterable[BrodenRow],
    image_format: str = "png",
) -> None:
    """Writes a Broden-format directory at ``root`` (which must not exist yet).

    Label frequencies (images with the label) and coverage (mean fraction of the image)
    in label.csv/category.csv/c_<category>.csv are computed from the rows.
    """
    if os.path.exists(root):
        raise FileExistsError(root)
    os.makedirs(os.path.join(root, "images"))
    frequency: dict[int, int] = {}
    coverage: dict[int, float] = {}
    index_rows = []
    for row in rows:
        stem = os.path.splitext(row.name)[0]
        cells = {}
        for c in categories:
            if row.pixel.get(c):
                names = []
                for j, m in enumerate(row.pixel[c]):
                    name = f"{stem}_{c}_{j}.png"
                    Image.fromarray(encode_label_png(m)).save(os.path.join(root, "images", name))
                    names.append(name)
                    numbers, area = np.unique(m[m > 0], return_counts=True)
                    for n, a in zip(numbers.tolist(), area.tolist()):
                        frequency[n] = frequency.get(n, 0) + 1
                        coverage[n] = coverage.get(n, 0.0) + a / m.size
                cells[c] = ";".join(names)
            elif row.image_level.get(c):
                for n in row.image_level[c]:
                    frequency[n] = frequency.get(n, 0) + 1
                    coverage[n] = coverage.get(n, 0.0) + 1.0
                cells[c] = ";".join(str(n) for n in row.image_level[c])
            else:
                cells[c] = ""
        if row.image is not None:
            Image.fromarray(np.asarray(row.image, np.uint8)).save(
                os.path.join(root, "images", row.name), format={"jpg": "jpeg"}.get(image_format.lower(), image_format)
            )
        index_rows.append([row.name, row.split, *row.image_size, *row.label_size] + [cells[c] for c in categories])
    with open(os.path.join(root, "index.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(INDEX_FIELDS) + list(categories))
        w.writerows(index_rows)
    with open(os.path.join(root, "label.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for label in labels:
            freq = frequency.get(label.number, 0)
            cov = coverage.get(label.number, 0.0) / max(freq, 1)
            w.writerow([label.number, label.name, f"{label.category}({freq})", freq, f"{cov:.6f}", ""])
    with open(os.path.join(root, "category.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "first", "last", "count", "frequency"])
        for c in categories:
            members = [label for label in labels if label.category == c]
            numbers = [label.number for label in members] or [0]
            images = sum(1 for r in index_rows if r[len(INDEX_FIELDS) + list(categories).index(c)])
            w.writerow([c, min(numbers), max(numbers), len(members), images])
    for c in categories:
        with open(os.path.join(root, f"c_{c}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["code", "number", "name", "frequency", "coverage"])
            members = [label for label in labels if label.category == c]
            for code, label in enumerate(members, start=1):
                freq = frequency.get(label.number, 0)
                w.writerow(
                    [code, label.number, label.name, freq, f"{coverage.get(label.number, 0.0) / max(freq, 1):.6f}"]
                )
