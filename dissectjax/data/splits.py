"""The synthetic scene splits: one named table of generator seeds, so no two uses of the
scenes share images by accident.

>>> SCENE_SPLITS["eval"], scene_split_seed("rank")
(201, 200)
>>> len(SCENE_CLASSES)
12
"""

from __future__ import annotations

import numpy as np

from dissectjax.data import synthetic
from dissectjax.errors import DissectError

SCENE_SPLITS: dict[str, int] = {
    "probe": 1,  # the probe set that dissection labels units on
    "train": 100,  # training images of the scene classifiers
    "val": 101,  # their validation images
    "rank": 200,  # surgery: images that choose units (rank them by damage)
    "eval": 201,  # surgery: held-out images that measure an edit
}
SCENE_CLASSES: tuple[str, ...] = synthetic.SCENES


def scene_split_seed(split: str) -> int:
    """The generator seed of a named split."""
    if split not in SCENE_SPLITS:
        raise DissectError(f"unknown scene split {split!r}; splits: {', '.join(SCENE_SPLITS)}")
    return SCENE_SPLITS[split]


def scene_images(n: int, split: str, image_size: int = 64,
                 shortcut: synthetic.Shortcut | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(uint8 [n, s, s, 3] images, int32 [n] scene labels) of a named split, with a planted
    ``shortcut`` cue if given (:class:`dissectjax.data.synthetic.Shortcut`)."""
    config = synthetic.SyntheticConfig(size=n, seed=scene_split_seed(split), image_size=image_size, shortcut=shortcut)
    return synthetic.generate_classification(config)


def scenes_showing(n: int, split: str, objects: tuple[str, ...]) -> np.ndarray:
    """bool [n]: which of the first ``n`` scenes of a named split draw any of ``objects``
    (whatever covers it later; the scenes' descriptions, nothing rendered)."""
    config = synthetic.SyntheticConfig(size=n, seed=scene_split_seed(split))
    unknown = [name for name in objects if name not in synthetic.OBJECTS]
    if unknown:
        raise DissectError(f"unknown object {unknown[0]!r}; objects: {', '.join(synthetic.OBJECTS)}")
    wanted = {synthetic.OBJECTS.index(name) for name in objects}
    return np.array([any(o.kind in wanted for o in synthetic.sample_scene(config, i).objects) for i in range(n)])
