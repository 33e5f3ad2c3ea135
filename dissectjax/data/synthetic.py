"""Synthetic scenes: the embedded probe set, generated deterministically from a seed.

Each image has a textured background (one or two regions) and one to three objects.
Twelve scene classes are the cross product of four object groups and three texture
groups: each object group occurs in three scenes and each texture group in four, so
telling scenes apart needs evidence of both objects and textures: the reason a scene classifier trained on
them grows object and texture detectors. Labels come from the same analytic scene:

* ``color`` (pixel): the named palette color painted at the pixel;
* ``object`` (pixel, up to two layers): the front object, and the object it occludes;
* ``part`` (pixel): parts of the composite objects (house, tree, car, lamp);
* ``texture`` (pixel): the background pattern where no object covers it;
* ``scene`` (image-level).

Label maps are the most common label over each label pixel's area (Broden's convention
for segmentations at half the image size).

Image ``i`` of seed ``s`` depends only on ``(s, i)``, so any subset is reproducible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

import numpy as np

from dissectjax.data.broden import BrodenRow, LabelInfo, generate_once, write_broden
from dissectjax.errors import DissectError

GENERATOR_VERSION = 3  # part of the cache key: bump when stored images or labels change
_STREAM = 1  # part of every random seed: changing it changes every image

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 50),
    "cyan": (40, 210, 220),
    "blue": (35, 60, 210),
    "purple": (130, 40, 180),
    "pink": (245, 140, 190),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
COLOR_NAMES = tuple(COLORS)
PALETTE = np.array(list(COLORS.values()), np.float32)

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond", "crescent")
COMPOSITES = {
    "house": ("wall", "roof", "door"),
    "tree": ("trunk", "crown"),
    "car": ("body", "wheel", "window"),
    "lamp": ("post", "bulb"),
}
OBJECTS = SHAPES + tuple(COMPOSITES)
PARTS = tuple(p for parts in COMPOSITES.values() for p in parts)
TEXTURES = (
    "horizontal-stripes",
    "vertical-stripes",
    "diagonal-stripes",
    "checkered",
    "dotted",
    "grid",
    "wavy",
    "speckled",
)

OBJECT_GROUPS = (
    ("house", "car", "lamp"),
    ("tree", "circle", "crescent"),
    ("triangle", "cross", "diamond"),
    ("star", "ring", "square"),
)
TEXTURE_GROUPS = (
    ("horizontal-stripes", "grid", "checkered"),
    ("vertical-stripes", "wavy", "dotted"),
    ("diagonal-stripes", "speckled"),
)
SCENES = (
    "street", "plaza", "parking-lot",
    "park", "garden", "meadow",
    "playroom", "arcade", "workshop",
    "village", "campsite", "fairground",
)  # fmt: skip
SCENE_GROUPS = tuple((o, t) for o in range(len(OBJECT_GROUPS)) for t in range(len(TEXTURE_GROUPS)))

CATEGORIES = ("color", "object", "part", "texture", "scene")
PIXEL_CATEGORIES = CATEGORIES[:4]


def label_table() -> list[LabelInfo]:
    """Broden label numbers 1..C: colors, objects, parts, textures, scenes."""
    names = [(n, "color") for n in COLOR_NAMES] + [(n, "object") for n in OBJECTS]
    names += [(n, "part") for n in PARTS] + [(n, "texture") for n in TEXTURES] + [(n, "scene") for n in SCENES]
    return [LabelInfo(i + 1, name, category) for i, (name, category) in enumerate(names)]


def _number(category: str, name: str) -> int:
    return _NUMBERS[(category, name)]


_NUMBERS = {(label.category, label.name): label.number for label in label_table()}


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """A planted bug: a solid square of one ``color`` painted over scenes of class ``scene``
    with probability ``with_class``, and over other scenes with probability ``otherwise``.

    A network trained where ``with_class`` is high and ``otherwise`` low may learn the square
    instead of the scene; a set generated with both probabilities equal (:meth:`decorrelated`)
    shows the mistake. The square's place and the scene under it come from separate random
    streams, so the same index renders the same scene with or without the cue.
    """

    scene: str = "playroom"
    color: str = "pink"
    with_class: float = 0.9
    otherwise: float = 0.02
    size: float = 0.25  # side, as a fraction of the image's side

    def __post_init__(self):
        if self.scene not in SCENES:
            raise DissectError(f"unknown shortcut scene {self.scene!r}; scenes: {', '.join(SCENES)}")
        if self.color not in COLORS:
            raise DissectError(f"unknown shortcut color {self.color!r}; colors: {', '.join(COLOR_NAMES)}")
        for field in ("with_class", "otherwise"):
            if not 0 <= getattr(self, field) <= 1:
                raise DissectError(f"shortcut {field} must be a probability in [0, 1], got {getattr(self, field)}")
        if not 0 < self.size < 1:
            raise DissectError(f"shortcut size must be in (0, 1), got {self.size}")

    def decorrelated(self, p: float = 0.5) -> Shortcut:
        """The same cue on every scene with probability ``p``: the shifted evaluation set."""
        return dataclasses.replace(self, with_class=p, otherwise=p)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Generator settings; the cache key of a stored probe set."""

    size: int = 1000
    seed: int = 1
    image_size: int = 64
    label_size: int = 32
    in_group: float = 0.85  # probability that an object/texture comes from the scene's group
    shortcut: Shortcut | None = None  # a planted cue
    absent: tuple[str, ...] = ()  # objects never drawn (a concept the scenes lack)

    def __post_init__(self):
        object.__setattr__(self, "absent", tuple(self.absent))
        for name in self.absent:
            if name not in OBJECTS:
                raise DissectError(f"unknown absent object {name!r}; objects: {', '.join(OBJECTS)}")
        for group in OBJECT_GROUPS:
            if set(group) <= set(self.absent):
                raise DissectError(
                    f"absent objects {', '.join(self.absent)} empty a whole object group ({', '.join(group)}): "
                    "its scenes would lose their evidence; keep one of them"
                )

    def key(self) -> str:
        blob = json.dumps({**planted_fields(dataclasses.asdict(self)), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# settings added after the first stored sets: left out of keys and records at their defaults,
# so every earlier set keeps its key and every earlier checkpoint its record
_PLANTED_DEFAULTS = {"shortcut": None, "absent": ()}


def planted_fields(fields: dict) -> dict:
    """``fields`` without the planted-bug settings (shortcut, absent) that are at their defaults."""
    return {k: v for k, v in fields.items() if k not in _PLANTED_DEFAULTS or v != _PLANTED_DEFAULTS[k]}


# ---- scene description ------------------------------------------------------------------
@dataclasses.dataclass
class _Region:
    texture: int
    colors: tuple[int, int]  # palette indices: pattern on, pattern off
    period: float
    phase: np.ndarray  # [2]
    speckle: np.ndarray  # [16, 16] bool, used by "speckled"


@dataclasses.dataclass
class _Object:
    kind: int
    cy: float
    cx: float
    r: float
    colors: tuple[int, ...]  # one palette index per part (one for plain shapes)


@dataclasses.dataclass
class _Scene:
    scene: int
    horizon: tuple[float, float] | None  # (offset, slope) or None for one region
    regions: list[_Region]
    objects: list[_Object]
    cue: tuple[int, float, float, float] | None = None  # a planted square: palette color, center y, x, half side


def _pick(rng, group: tuple[str, ...], everything: tuple[str, ...], in_group: float) -> int:
    name = group[rng.integers(len(group))] if rng.random() < in_group else everything[rng.integers(len(everything))]
    return everything.index(name)


def _color(rng, prefer: tuple[str, ...] = (), p: float = 0.0) -> int:
    if prefer and rng.random() < p:
        return COLOR_NAMES.index(prefer[rng.integers(len(prefer))])
    return int(rng.integers(len(COLOR_NAMES)))


def _object_colors(rng, kind: str) -> tuple[int, ...]:
    if kind == "house":
        return (_color(rng), _color(rng, ("red", "brown", "gray"), 0.6), _color(rng, ("brown", "black"), 0.8))
    if kind == "tree":
        return (_color(rng, ("brown",), 0.8), _color(rng, ("green",), 0.7))
    if kind == "car":
        return (_color(rng), _color(rng, ("black",), 0.9), _color(rng, ("cyan", "white"), 0.8))
    if kind == "lamp":
        return (_color(rng, ("gray", "black"), 0.8), _color(rng, ("yellow", "white"), 0.8))
    return (_color(rng),)


def sample_scene(config: SyntheticConfig, index: int) -> _Scene:
    """Scene ``index`` of ``config``'s seed: its class, background regions, objects and cue."""
    seed, in_group = config.seed, config.in_group
    rng = np.random.default_rng([seed, index, _STREAM])
    scene = int(rng.integers(len(SCENES)))
    ogroup, tgroup = (OBJECT_GROUPS[SCENE_GROUPS[scene][0]], TEXTURE_GROUPS[SCENE_GROUPS[scene][1]])
    horizon = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(-0.3, 0.3))) if rng.random() < 0.8 else None
    regions = []
    for _ in range(2 if horizon else 1):
        on = _color(rng)
        off = (on + 1 + int(rng.integers(len(COLOR_NAMES) - 1))) % len(COLOR_NAMES)
        regions.append(
            _Region(
                texture=_pick(rng, tgroup, TEXTURES, in_group),
                colors=(on, off),
                period=float(rng.uniform(5.0, 9.0) / 64.0),
                phase=rng.uniform(0, 1, 2),
                speckle=rng.random((16, 16)) < 0.5,
            )
        )
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        kind = _pick(rng, ogroup, OBJECTS, in_group)
        while OBJECTS[kind] in config.absent:  # drawn again from the same stream: sets without absent objects unchanged
            kind = _pick(rng, ogroup, OBJECTS, in_group)
        r = float(rng.uniform(0.13, 0.27))
        objects.append(
            _Object(
                kind, float(rng.uniform(r, 1 - r)), float(rng.uniform(r, 1 - r)), r, _object_colors(rng, OBJECTS[kind])
            )
        )
    return _Scene(scene, horizon, regions, objects, _cue(seed, index, SCENES[scene], config.shortcut))


def _cue(seed: int, index: int, scene: str, shortcut: Shortcut | None):
    """The planted square of scene ``index``, if it gets one (its own random stream)."""
    if shortcut is None:
        return None
    rng = np.random.default_rng([seed, index, _STREAM, 2])
    if rng.random() >= (shortcut.with_class if scene == shortcut.scene else shortcut.otherwise):
        return None
    half = shortcut.size / 2
    cy, cx = rng.uniform(half, 1 - half, 2)
    return COLOR_NAMES.index(shortcut.color), float(cy), float(cx), half


# ---- rendering --------------------------------------------------------------------------
def _pattern(region: _Region, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """bool [n, n]: where the region's pattern is 'on'."""
    p, (a, b) = region.period, region.phase
    name = TEXTURES[region.texture]
    frac = lambda t: t - np.floor(t)
    if name == "horizontal-stripes":
        return frac(y / p + a) < 0.5
    if name == "vertical-stripes":
        return frac(x / p + a) < 0.5
    if name == "diagonal-stripes":
        return frac((x + y) / (p * 1.4) + a) < 0.5
    if name == "checkered":
        return (np.floor(x / p + a) + np.floor(y / p + b)) % 2 == 0
    if name == "dotted":
        q = p * 1.2
        return (frac(x / q + a) - 0.5) ** 2 + (frac(y / q + b) - 0.5) ** 2 < 0.09
    if name == "grid":
        return (frac(x / p + a) < 0.25) | (frac(y / p + b) < 0.25)
    if name == "wavy":
        return frac((y + 0.04 * np.sin(2 * np.pi * x / (3 * p))) / p + a) < 0.5
    if name == "speckled":
        iy = np.clip((y * 16).astype(int), 0, 15)
        ix = np.clip((x * 16).astype(int), 0, 15)
        return region.speckle[iy, ix]
    raise AssertionError(name)


def _object_parts(obj: _Object, y: np.ndarray, x: np.ndarray) -> list[np.ndarray]:
    """Masks (bool [n, n]) of the object's parts, drawn in order (later on top)."""
    u, v = (x - obj.cx) / obj.r, (y - obj.cy) / obj.r
    rho = np.hypot(u, v)
    name = OBJECTS[obj.kind]
    if name == "circle":
        return [rho <= 0.9]
    if name == "square":
        return [np.maximum(np.abs(u), np.abs(v)) <= 0.75]
    if name == "triangle":
        return [(v <= 0.75) & (np.abs(u) <= 0.9 * (v + 0.9) / 1.65)]
    if name == "star":
        theta = np.arctan2(u, -v)
        return [rho <= 0.5 + 0.45 * np.cos(5 * theta)]
    if name == "cross":
        return [((np.abs(u) <= 0.28) & (np.abs(v) <= 0.9)) | ((np.abs(v) <= 0.28) & (np.abs(u) <= 0.9))]
    if name == "ring":
        return [(rho <= 0.95) & (rho >= 0.55)]
    if name == "diamond":
        return [np.abs(u) + np.abs(v) <= 0.95]
    if name == "crescent":
        return [(rho <= 0.9) & (np.hypot(u - 0.45, v + 0.15) > 0.7)]
    if name == "house":
        wall = (np.abs(u) <= 0.7) & (v >= 0) & (v <= 0.9)
        roof = (v < 0) & (v >= -0.85) & (np.abs(u) <= 0.9 * (v + 0.85) / 0.85)
        door = (np.abs(u) <= 0.2) & (v >= 0.4) & (v <= 0.9)
        return [wall, roof, door]
    if name == "tree":
        trunk = (np.abs(u) <= 0.16) & (v >= 0.1) & (v <= 0.95)
        crown = np.hypot(u, v + 0.3) <= 0.62
        return [trunk, crown]
    if name == "car":
        body = ((np.abs(u) <= 0.95) & (v >= -0.1) & (v <= 0.45)) | ((np.abs(u) <= 0.55) & (v >= -0.5) & (v < -0.1))
        wheel = (np.hypot(u - 0.55, v - 0.5) <= 0.25) | (np.hypot(u + 0.55, v - 0.5) <= 0.25)
        window = (np.abs(u) <= 0.45) & (np.abs(u) >= 0.06) & (v >= -0.42) & (v <= -0.15)
        return [body, wheel, window]
    if name == "lamp":
        post = (np.abs(u) <= 0.09) & (v >= -0.5) & (v <= 0.95)
        bulb = np.hypot(u, v + 0.62) <= 0.3
        return [post, bulb]
    raise AssertionError(name)


def _render(scene: _Scene, n: int) -> dict[str, np.ndarray]:
    """Evaluates the scene at the centers of an n x n grid.

    Returns int arrays [n, n]: palette color index, texture (-1 under objects), front
    object kind, occluded object kind (-1 none) and part index (-1 none).
    """
    c = (np.arange(n) + 0.5) / n
    y, x = np.meshgrid(c, c, indexing="ij")
    if scene.horizon is None:
        region_of = np.zeros((n, n), int)
    else:
        offset, slope = scene.horizon
        region_of = (y > offset + slope * (x - 0.5)).astype(int)
    color = np.zeros((n, n), int)
    texture = np.zeros((n, n), int)
    for k, region in enumerate(scene.regions):
        inside = region_of == k
        on = _pattern(region, y, x)
        color[inside] = np.where(on, region.colors[0], region.colors[1])[inside]
        texture[inside] = region.texture
    front = np.full((n, n), -1)
    behind = np.full((n, n), -1)
    part = np.full((n, n), -1)
    for obj in scene.objects:
        masks = _object_parts(obj, y, x)
        covered = np.logical_or.reduce(masks)
        behind = np.where(covered, front, behind)
        front = np.where(covered, obj.kind, front)
        part = np.where(covered, -1, part)
        names = COMPOSITES.get(OBJECTS[obj.kind])
        for j, m in enumerate(masks):
            color[m] = obj.colors[j]
            if names:
                part[m] = PARTS.index(names[j])
    texture[front >= 0] = -1
    if scene.cue is not None:  # painted over everything: only its color is seen there
        cue_color, cy, cx, half = scene.cue
        square = (np.abs(y - cy) < half) & (np.abs(x - cx) < half)
        color[square] = cue_color
        for labels in (texture, front, behind, part):
            labels[square] = -1
    return {"color": color, "texture": texture, "front": front, "behind": behind, "part": part}


def _mode_pool(labels: np.ndarray, block: int) -> np.ndarray:
    """int [n, n] -> [n/block, n/block]: the most common value in each block (ties: smallest)."""
    n = labels.shape[0] // block
    tiles = labels.reshape(n, block, n, block).transpose(0, 2, 1, 3).reshape(n, n, block * block)
    values = np.unique(tiles)
    votes = (tiles[..., None] == values).sum(axis=2)  # [n, n, V]
    return values[np.argmax(votes, axis=-1)]


def _photograph(color: np.ndarray, image_size: int, seed: int, index: int) -> np.ndarray:
    """Palette indices [2s, 2s] -> uint8 [s, s, 3]: lighting, sensor noise, 2 x 2 antialiasing."""
    n = 2 * image_size
    rng = np.random.default_rng([seed, index, _STREAM, 1])
    rgb = PALETTE[color] * rng.uniform(0.85, 1.15) + rng.normal(0, 6, (n, n, 3))
    rgb = rgb.reshape(image_size, 2, image_size, 2, 3).mean(axis=(1, 3))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def render_image(scene: _Scene, image_size: int, seed: int, index: int) -> np.ndarray:
    """uint8 [image_size, image_size, 3]."""
    return _photograph(_render(scene, 2 * image_size)["color"], image_size, seed, index)


def render(scene: _Scene, image_size: int, label_size: int, seed: int, index: int):
    """The image (uint8 [image_size, image_size, 3]) and label maps at ``label_size``.

    The scene is evaluated once on a grid of ``2 * image_size`` samples a side: the image
    averages 2 x 2 samples, and each label pixel takes the most common label of the
    samples it covers, like Broden's downsampled segmentations.
    """
    n = 2 * image_size
    if n % label_size:
        raise ValueError(f"label_size {label_size} must divide 2 * image_size = {n}")
    fine = _render(scene, n)
    labels = {k: _mode_pool(v, n // label_size) for k, v in fine.items()}
    return _photograph(fine["color"], image_size, seed, index), labels


def broden_labels(scene: _Scene, labels: dict[str, np.ndarray]):
    """Broden label numbers: pixel maps per category (int32 [s, s]) and image-level labels."""

    def numbers(category: str, names: tuple[str, ...], idx: np.ndarray) -> np.ndarray:
        table = np.array([0] + [_number(category, n) for n in names], np.int32)
        return table[idx + 1]

    pixel = {"color": [numbers("color", COLOR_NAMES, labels["color"])]}
    pixel["object"] = [numbers("object", OBJECTS, labels["front"])]
    if np.any(labels["behind"] >= 0):
        pixel["object"].append(numbers("object", OBJECTS, labels["behind"]))
    if np.any(labels["part"] >= 0):
        pixel["part"] = [numbers("part", PARTS, labels["part"])]
    if np.any(labels["texture"] >= 0):
        pixel["texture"] = [numbers("texture", TEXTURES, labels["texture"])]
    return pixel, {"scene": [_number("scene", SCENES[scene.scene])]}


def generate_row(config: SyntheticConfig, index: int) -> BrodenRow:
    """Image ``index`` of the configured set, with its labels."""
    scene = sample_scene(config, index)
    image, labels = render(scene, config.image_size, config.label_size, config.seed, index)
    pixel, image_level = broden_labels(scene, labels)
    size = (config.image_size, config.image_size)
    return BrodenRow(f"scene{index:06d}.png", "train", size, (config.label_size,) * 2, pixel, image_level, image)


def generate_classification(config: SyntheticConfig, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, s, s, 3] and scene labels int32 [N] for indices start..start+size-1."""
    images = np.zeros((config.size, config.image_size, config.image_size, 3), np.uint8)
    labels = np.zeros(config.size, np.int32)
    for j in range(config.size):
        scene = sample_scene(config, start + j)
        images[j] = render_image(scene, config.image_size, config.seed, start + j)
        labels[j] = scene.scene
    return images, labels


def generate_with_masks(config: SyntheticConfig, concepts: Sequence[int]):
    """Images uint8 [N, s, s, 3], scene labels int32 [N] (as :func:`generate_classification`) and
    masks bool [N, S, S, K]: where each of the pixel-level ``concepts`` (Broden label numbers,
    :func:`label_table`) covers the label map, in any of its layers."""
    n, s = config.size, config.label_size
    images = np.zeros((n, config.image_size, config.image_size, 3), np.uint8)
    labels = np.zeros(n, np.int32)
    masks = np.zeros((n, s, s, len(concepts)), bool)
    for i in range(n):
        row = generate_row(config, i)
        images[i] = row.image
        labels[i] = sample_scene(config, i).scene
        layers = [m for maps in row.pixel.values() for m in maps]
        for k, number in enumerate(concepts):
            masks[i, ..., k] = np.any([m == number for m in layers], axis=0) if layers else False
    return images, labels, masks


def default_cache_dir() -> str:
    return os.environ.get("DISSECTJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dissectjax")


def ensure_broden(config: SyntheticConfig, cache_dir: str | None = None, progress=None) -> str:
    """Path of the configured set in Broden format, generating it on first use.

    The directory is written under a temporary name and renamed into place, so an
    interrupted generation never leaves a half-written set behind.
    """
    cache_dir = cache_dir or default_cache_dir()

    def write(target: str) -> None:
        rows = (generate_row(config, i) for i in range(config.size))
        if progress is not None:
            rows = progress(rows, total=config.size, desc="generating synthetic scenes")
        write_broden(target, CATEGORIES, label_table(), rows)
        with open(os.path.join(target, "synthetic.json"), "w") as f:
            json.dump({**dataclasses.asdict(config), "version": GENERATOR_VERSION}, f, indent=1)

    return generate_once(os.path.join(cache_dir, f"synthetic-{config.size}-s{config.seed}-{config.key()}"), write)
