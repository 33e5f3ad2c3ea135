"""A unit's top images with its mask: the exact dissection mask, drawn for people.

maps [k, h, w] + threshold  --upsample (as in the tally)-->  masks bool [k, sh, sw]
image [H, W, 3] + mask      --nearest to H x W-->            dimmed outside, outlined inside
"""

from __future__ import annotations

import base64
import io

import jax.numpy as jnp
import numpy as np

from dissectjax.stats.upsample import upsample

OUTLINE = np.array([255, 214, 0], np.uint8)  # the mask's edge, drawn inside it
DIM = 0.3  # brightness kept outside the mask


def unit_masks(maps: np.ndarray, threshold: float, label_size: tuple[int, int]) -> np.ndarray:
    """maps float [k, h, w] -> bool [k, sh, sw]: upsampled and thresholded as the tally does."""
    acts = jnp.asarray(np.asarray(maps, np.float32)[..., None])  # [k, h, w, 1]
    return np.asarray(upsample(acts, tuple(label_size))[..., 0] > np.float32(threshold))


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [sh, sw] -> bool [H, W], each output pixel taking the mask pixel under its center."""
    rows = ((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]).astype(np.int64)
    cols = ((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]).astype(np.int64)
    return mask[rows[:, None], cols[None, :]]


def _edge(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels that touch a pixel outside it (4-neighbours; the border counts as outside)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] with everything outside ``mask`` dimmed and the mask's edge outlined."""
    mask = resize_nearest(mask, image.shape[:2])
    out = np.where(mask[..., None], image, (image * DIM).astype(np.uint8))
    out[_edge(mask)] = OUTLINE
    return out


def strip(images: list[np.ndarray], gap: int = 2, fill: int = 255) -> np.ndarray:
    """Images [H, W, 3] side by side with a ``gap`` of ``fill`` between them."""
    h = max(im.shape[0] for im in images)
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(np.full((h, gap, 3), fill, np.uint8))
        parts.append(np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=fill))
    return np.concatenate(parts, axis=1)


def data_uri(image: np.ndarray, fmt: str = "JPEG", quality: int = 85) -> str:
    """An inline ``data:`` URI of a uint8 image [H, W, 3] (or a matplotlib PNG's bytes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(
        buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {})
    )
    return f"data:image/{fmt.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"
