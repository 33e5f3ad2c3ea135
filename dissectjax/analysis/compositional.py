"""Compositional explanations (Mu & Andreas 2020): a unit as a formula of concepts.

Formulas join concepts with AND, OR and AND NOT; a formula's mask is the pixel-wise
combination of its concepts' masks (an image-level concept covers its images), and its IoU
with a unit is taken over the whole probe set, like a single concept's (but without the
per-category conditioning, as in the published method). A beam search (width 5, length up
to 3 by default) grows the best formulas one term at a time, for all units at once.

Every candidate ``F op C`` is scored from four integer counts, because for masks F, C and a
unit's mask U (``|X|`` = pixels of X)::

    F AND C      intersection |FCU|               mask size |FC|
    F OR C       |FU| + |CU| - |FCU|              |F| + |C| - |FC|
    F AND NOT C  |FU| - |FCU|                     |F| - |FC|

and union = |U| + mask size - intersection. |F| and |FU| are per beam formula, |C| and |CU|
come from the length-1 pass, and |FC|, |FCU| for all concepts at once are one matrix
product of the 0/1 matrix [pixels, 2 x units x beam] of (F AND U, F) with the concept
masks [pixels, concepts]. One pass over the probe set per formula length scores every
extension of every unit's beam: on an accelerator this is a dense GEMM, exact because the
operands are 0/1 and every partial sum stays below 2^24 (float32 accumulation).

The unit masks (thresholded, upsampled activations) and the concept masks are computed
once and kept bit-packed, pixel-major: ``(U + C) x pixels / 8`` bytes. Activations are
never recomputed per candidate or per pass.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dissectjax.dissect.sources import labelled_pixels

OPS = ("AND", "OR", "AND NOT")
EXACT_CHUNK_PIXELS = 1 << 24  # float32 sums of 0/1 products are exact below 2^24


@dataclasses.dataclass(frozen=True)
class Masks:
    """Bit-packed masks of a probe set's labelled pixels; bit j of word w is pixel 32 w + j.

    units: uint32 [W, U]; concepts: uint32 [W, C]; pixels: the labelled pixels P <= 32 W
    (padding bits are zero in every mask, so they count nowhere).
    """

    units: np.ndarray
    concepts: np.ndarray
    pixels: int

    def __post_init__(self):
        if self.units.shape[0] != self.concepts.shape[0]:
            raise ValueError(f"unit words {self.units.shape} and concept words {self.concepts.shape} differ")


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """bool [P, R] -> uint32 [ceil(P / 32), R], pixel-major."""
    p, r = bits.shape
    padded = np.zeros((-(-p // 32) * 32, r), bool)
    padded[:p] = bits
    shifts = np.arange(32, dtype=np.uint32)[None, :, None]
    return (padded.reshape(-1, 32, r).astype(np.uint32) << shifts).sum(axis=1, dtype=np.uint32)


def unpack_bits(words: jax.Array) -> jax.Array:
    """uint32 [W, R] -> bool [32 W, R]."""
    shifts = jnp.arange(32, dtype=jnp.uint32)[None, :, None]
    return ((words[:, None, :] >> shifts) & 1).astype(bool).reshape(-1, words.shape[1])


def collect_masks(source, probe, layer: str, thresholds: np.ndarray, batch_size: int = 50) -> Masks:
    """The unit masks (upsampled activation > threshold) and concept masks of every labelled pixel."""
    t = np.asarray(thresholds, np.float32)
    units, concepts, pixels = [], [], 0
    for up, present in labelled_pixels(source, probe, layer, batch_size):
        # each batch is padded to whole words; padding pixels are zero in every mask
        units.append(pack_bits((up > t).reshape(-1, up.shape[-1])))
        concepts.append(pack_bits(present.reshape(-1, present.shape[-1])))
        pixels += up.shape[0] * up.shape[1]
    return Masks(np.concatenate(units), np.concatenate(concepts), pixels)


@dataclasses.dataclass(frozen=True)
class Formula:
    """terms: (op, concept index) pairs, the first op None: ((None, 3), ("AND", 7), ...)."""

    terms: tuple
    iou: float

    def describe(self, names: Sequence[str]) -> str:
        text = names[self.terms[0][1]]
        for op, c in self.terms[1:]:
            text = f"({text} {op} {names[c]})"
        return text


@dataclasses.dataclass(frozen=True)
class Explanations:
    """The search's result: the best formula per unit, and every single concept's IoU."""

    formulas: list[Formula]
    single_iou: np.ndarray  # float64 [U, C], unconditioned

    def best_single(self) -> np.ndarray:
        """int [U]: each unit's best single concept."""
        return np.argmax(self.single_iou, axis=1)


# ---- counting kernels (one chunk of words each; summed over chunks) ----------------------
def _product(x: jax.Array, concepts: jax.Array, dtype) -> tuple[jax.Array, jax.Array]:
    """For 0/1 matrices x [P, R] and concepts [P, C] (P < 2^24): x^T @ concepts int32 [R, C]
    and the column sums of x int32 [R], from one GEMM against the concepts and a ones column."""
    ones = jnp.ones((len(concepts), 1), dtype)
    out = jnp.dot(x.T.astype(dtype), jnp.concatenate([concepts.astype(dtype), ones], axis=1),
                  preferred_element_type=jnp.float32).astype(jnp.int32)  # fmt: skip
    return out[:, :-1], out[:, -1]


@functools.partial(jax.jit, static_argnames="dtype")
def _single_counts(unit_words, concept_words, dtype):
    """|U| [U], |C| [C], |CU| [U, C] of one chunk."""
    u, c = unpack_bits(unit_words), unpack_bits(concept_words)
    n_cu, n_u = _product(u, c, dtype)
    return n_u, c.sum(0, dtype=jnp.int32), n_cu


def formula_masks(concepts: jax.Array, terms: jax.Array, ops: jax.Array) -> jax.Array:
    """bool [P, U, B]: the pixels of each beam formula.

    concepts: bool [P, C]; terms: int32 [U, B, L] concept indices; ops: int32 [U, B, L]
    indices into OPS (the first term's op is ignored).
    """
    f = concepts[:, terms[:, :, 0]]
    for t in range(1, terms.shape[2]):
        c, op = concepts[:, terms[:, :, t]], ops[:, :, t]
        f = jnp.where(op == 0, f & c, jnp.where(op == 1, f | c, f & ~c))
    return f


@functools.partial(jax.jit, static_argnames="dtype")
def _beam_counts(unit_words, concept_words, terms, ops, dtype):
    """|F| [U, B], |FU| [U, B], |FC| [U, B, C], |FCU| [U, B, C] of one chunk."""
    u, c = unpack_bits(unit_words), unpack_bits(concept_words)
    f = formula_masks(c, terms, ops)  # [P, U, B]
    fu = f & u[:, :, None]
    shape = terms.shape[:2]
    n_fc, n_f = _product(f.reshape(len(f), -1), c, dtype)
    n_fcu, n_fu = _product(fu.reshape(len(f), -1), c, dtype)
    return n_f.reshape(shape), n_fu.reshape(shape), n_fc.reshape(*shape, -1), n_fcu.reshape(*shape, -1)


def extension_iou(n_u, n_c, n_cu, n_f, n_fu, n_fc, n_fcu) -> np.ndarray:
    """float64 [U, B, 3, C]: IoU of ``F op C`` for every beam formula F, op in OPS and concept C."""
    n_u, n_c, n_cu = (np.asarray(x, np.int64) for x in (n_u, n_c, n_cu))
    n_f, n_fu, n_fc, n_fcu = (np.asarray(x, np.int64) for x in (n_f, n_fu, n_fc, n_fcu))
    f, fu = n_f[:, :, None], n_fu[:, :, None]
    cu, c = n_cu[:, None, :], n_c[None, None, :]
    inter = np.stack([n_fcu, fu + cu - n_fcu, fu - n_fcu], axis=2)
    size = np.stack([n_fc, f + c - n_fc, f - n_fc], axis=2)
    union = n_u[:, None, None, None] + size - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def _pick(scores: np.ndarray, beam: int) -> np.ndarray:
    """Per row of scores [U, K], the indices of the ``beam`` best (stable: lower index wins ties)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :beam]


def default_chunk_pixels(units: int, concepts: int, beam: int, budget_bytes: int = 1 << 30) -> int:
    """Pixels per pass step such that the chunk's operands fit ``budget_bytes`` (and sums stay exact)."""
    per_pixel = 4 * (2 * units * beam + concepts + 1) + units * beam * 3
    return int(max(32 * 32, min(EXACT_CHUNK_PIXELS, budget_bytes // per_pixel)))


def explain_units(
    masks: Masks,
    length: int = 3,
    beam: int = 5,
    chunk_pixels: int | None = None,
    progress: Callable = lambda it, **_: it,
) -> Explanations:
    """The best formula of up to ``length`` concepts for every unit, by beam search.

    A formula never repeats a concept. One pass over the masks per length; within a pass,
    every extension of every unit's beam is scored (``extension_iou``).
    """
    n_units, n_concepts = masks.units.shape[1], masks.concepts.shape[1]
    if length < 1 or beam < 1:
        raise ValueError(f"length and beam must be positive, got length={length}, beam={beam}")
    length, beam = min(length, n_concepts), min(beam, n_concepts)
    if 32 * masks.units.shape[0] >= 2**31:
        raise ValueError(f"{32 * masks.units.shape[0]} pixels overflow the int32 counts; split the probe set")
    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    words = max(1, (chunk_pixels or default_chunk_pixels(n_units, n_concepts, beam)) // 32)
    starts = range(0, masks.units.shape[0], words)
    unit_words, concept_words = jnp.asarray(masks.units), jnp.asarray(masks.concepts)

    def chunks():
        for s in starts:
            u, c = unit_words[s : s + words], concept_words[s : s + words]
            if len(u) < words:  # a fixed shape for one compilation; zero words are no pixels
                u, c = (jnp.pad(x, ((0, words - len(x)), (0, 0))) for x in (u, c))
            yield u, c

    def total(kernel, *args, desc):
        sums = None
        for u, c in progress(chunks(), total=len(starts), desc=desc):
            out = kernel(u, c, *args, dtype=dtype)
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        return jax.tree.map(np.asarray, sums)

    n_u, n_c, n_cu = total(_single_counts, desc="formulas of length 1")
    union = n_u[:, None].astype(np.int64) + n_c[None, :] - n_cu
    single = np.where(union > 0, n_cu / np.maximum(union, 1), 0.0)  # [U, C]
    first = _pick(single, beam)  # [U, B]
    terms = first[:, :, None].astype(np.int32)
    ops = np.zeros_like(terms)
    score = np.take_along_axis(single, first, axis=1)
    best = [Formula(((None, int(terms[u, 0, 0])),), float(score[u, 0])) for u in range(n_units)]
    for step in range(1, length):
        counts = total(_beam_counts, jnp.asarray(terms), jnp.asarray(ops), desc=f"formulas of length {step + 1}")
        scores = extension_iou(n_u, n_c, n_cu, *counts)  # [U, B, 3, C]
        used = np.zeros((n_units, beam, n_concepts), bool)
        np.put_along_axis(used, terms, True, axis=2)
        scores = np.where(used[:, :, None, :], -np.inf, scores).reshape(n_units, -1)
        chosen = _pick(scores, beam)
        b, op, c = np.unravel_index(chosen, (beam, len(OPS), n_concepts))
        score = np.take_along_axis(scores, chosen, axis=1)
        terms = np.concatenate([np.take_along_axis(terms, b[:, :, None], 1), c[:, :, None]], axis=2).astype(np.int32)
        ops = np.concatenate([np.take_along_axis(ops, b[:, :, None], 1), op[:, :, None]], axis=2).astype(np.int32)
        for u in range(n_units):
            if score[u, 0] > best[u].iou:
                pairs = [(None if t == 0 else OPS[ops[u, 0, t]], int(terms[u, 0, t])) for t in range(step + 1)]
                best[u] = Formula(tuple(pairs), float(score[u, 0]))
    return Explanations(best, single)
