"""Compositional explanations: formula IoU against NumPy, and a planted formula found by search."""

import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.compositional import OPS, _pack, collect_masks, combine, explain_unit, iou
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.sources import ArraySource


@pytest.mark.parametrize("op", OPS)
def test_formula_iou_equals_numpy(op):
    rng = np.random.default_rng(OPS.index(op))
    unit, a, b = (rng.random(1000) < p for p in (0.2, 0.3, 0.4))
    expected_mask = {"AND": a & b, "OR": a | b, "AND NOT": a & ~b}[op]
    expected = (unit & expected_mask).sum() / (unit | expected_mask).sum()
    packed = _pack(np.stack([unit, a, b]))
    formula = combine(jnp.asarray(packed[1]), jnp.asarray(packed[2]), op)
    assert float(iou(jnp.asarray(packed[0]), formula)) == pytest.approx(expected, abs=1e-6)


def test_beam_search_finds_a_planted_formula(tmp_path):
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=200, seed=7), cache_dir=str(tmp_path)))
    red, circle = probe.concepts.index_of("red"), probe.concepts.index_of("circle")
    acts = np.zeros((len(probe), 1, 32, 32), np.float32)
    for i in range(len(probe)):
        pixel, _ = probe.labels(i)
        acts[i, 0] = np.any(pixel == red, axis=0) & np.any(pixel == circle, axis=0)  # fires on red AND circle
    assert acts.sum() > 20
    unit_bits, concept_bits = collect_masks(ArraySource(acts, "planted", len(probe)), probe, "planted", np.array([0.5]))
    best = explain_unit(unit_bits[0], concept_bits)
    assert best.iou == pytest.approx(1.0)
    assert best.describe(probe.concepts.names) in ("(red AND circle)", "(circle AND red)")
