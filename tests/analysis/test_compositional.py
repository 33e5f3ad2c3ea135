"""Compositional explanations: candidate IoUs against explicit NumPy masks, and a planted formula found."""

import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.analysis.compositional import (
    OPS,
    Masks,
    _beam_counts,
    _single_counts,
    collect_masks,
    explain_units,
    extension_iou,
    pack_bits,
    unpack_bits,
)
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect.sources import ArraySource


def _numpy_formula(concepts: np.ndarray, terms, ops) -> np.ndarray:
    """bool [P]: an explicit formula mask, term by term."""
    f = concepts[:, terms[0]].copy()
    for t in range(1, len(terms)):
        c = concepts[:, terms[t]]
        f = {"AND": f & c, "OR": f | c, "AND NOT": f & ~c}[OPS[ops[t]]]
    return f


def _iou(a, b) -> float:
    union = (a | b).sum()
    return (a & b).sum() / union if union else 0.0


def test_pack_round_trip():
    bits = np.random.default_rng(0).random((1000, 7)) < 0.3
    words = pack_bits(bits)
    assert words.shape == (32, 7) and words.dtype == np.uint32
    back = np.asarray(unpack_bits(jnp.asarray(words)))
    np.testing.assert_array_equal(back[:1000], bits)
    assert not back[1000:].any()


@pytest.mark.parametrize("length", [1, 2, 3])
def test_every_extension_iou_equals_numpy(length):
    """Counts summed over several padded chunks give each candidate's IoU on explicit masks."""
    rng = np.random.default_rng(length)
    pixels, n_units, n_concepts, beam = 3000, 3, 6, 2
    units = rng.random((pixels, n_units)) < rng.uniform(0.05, 0.4, n_units)
    concepts = rng.random((pixels, n_concepts)) < rng.uniform(0.05, 0.5, n_concepts)
    terms = np.stack([[rng.permutation(n_concepts)[:length] for _ in range(beam)] for _ in range(n_units)])
    ops = rng.integers(0, 3, size=terms.shape)
    u_words, c_words = pack_bits(units), pack_bits(concepts)
    single, beams = None, None
    for s in range(0, len(u_words), 30):  # 30-word chunks: the last one is padded with zeros
        u, c = (np.pad(x[s : s + 30], ((0, max(0, s + 30 - len(x))), (0, 0))) for x in (u_words, c_words))
        a = _single_counts(jnp.asarray(u), jnp.asarray(c), dtype=jnp.float32)
        b = _beam_counts(jnp.asarray(u), jnp.asarray(c), jnp.asarray(terms, jnp.int32), jnp.asarray(ops, jnp.int32),
                         dtype=jnp.float32)  # fmt: skip
        single = a if single is None else [x + y for x, y in zip(single, a)]
        beams = b if beams is None else [x + y for x, y in zip(beams, b)]
    np.testing.assert_array_equal(np.asarray(single[2]), units.T.astype(int) @ concepts.astype(int))
    scores = extension_iou(*single, *beams)
    assert scores.shape == (n_units, beam, 3, n_concepts)
    for u in range(n_units):
        for b in range(beam):
            f = _numpy_formula(concepts, terms[u, b], ops[u, b])
            for o, op in enumerate(OPS):
                for c in range(n_concepts):
                    g = {"AND": f & concepts[:, c], "OR": f | concepts[:, c], "AND NOT": f & ~concepts[:, c]}[op]
                    assert scores[u, b, o, c] == pytest.approx(_iou(units[:, u], g), abs=1e-12)


def test_search_result_is_the_numpy_iou_of_its_formula():
    rng = np.random.default_rng(5)
    units = rng.random((2000, 4)) < 0.2
    concepts = rng.random((2000, 8)) < 0.3
    out = explain_units(Masks(pack_bits(units), pack_bits(concepts), 2000), length=3, beam=3, chunk_pixels=512)
    for u, f in enumerate(out.formulas):
        terms = [c for _, c in f.terms]
        assert len(set(terms)) == len(terms)  # no concept twice
        ops = [0] + [OPS.index(op) for op, _ in f.terms[1:]]
        assert f.iou == pytest.approx(_iou(units[:, u], _numpy_formula(concepts, terms, ops)), abs=1e-12)
        assert f.iou >= out.single_iou[u].max()


def test_beam_search_finds_a_planted_formula(tmp_path):
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=200, seed=7), cache_dir=str(tmp_path)))
    red, circle = probe.concepts.index_of("red"), probe.concepts.index_of("circle")
    acts = np.zeros((len(probe), 1, 32, 32), np.float32)
    for i in range(len(probe)):
        pixel, _ = probe.labels(i)
        acts[i, 0] = np.any(pixel == red, axis=0) & np.any(pixel == circle, axis=0)  # fires on red AND circle
    assert acts.sum() > 20
    masks = collect_masks(ArraySource(acts, "planted", len(probe)), probe, "planted", np.array([0.5]))
    assert masks.pixels == 200 * 32 * 32
    out = explain_units(masks)
    best = out.formulas[0]
    assert best.iou == pytest.approx(1.0)
    assert best.describe(probe.concepts.names) in ("(red AND circle)", "(circle AND red)")
    assert out.single_iou[0].max() < 0.9  # neither concept alone explains the unit
