"""`dissectjax bench --workload semantics`: both counting rules on one planted fixture, one table."""

import numpy as np

from dissectjax.bench import format_semantics, main, plant_units, run_semantics, semantics_fixture


def test_planted_units_read_their_concept():
    probe, acts = semantics_fixture(32, units=8)
    planted, concepts = plant_units(probe, acts, 6)
    assert len(set(concepts.tolist())) == 6
    categories = probe.concepts.category[concepts]
    np.testing.assert_array_equal(categories[:4], [0, 1, 2, 3])  # object, part, material, color in turn
    pixel = probe._pixel
    for u in range(6):
        layer = [0, 2, 3, 4][int(categories[u])]  # the pixel layer of each of those categories
        share = (pixel[:, layer] == concepts[u]).reshape(32, 7, 16, 7, 16).mean(axis=(2, 4))
        before, after = (np.corrcoef(share.ravel(), a[..., u].ravel())[0, 1] for a in (acts, planted))
        assert after > 0.4 and abs(before) < 0.2, (u, before, after)  # noise at a quarter strength stays
    np.testing.assert_array_equal(planted[..., 6:], acts[..., 6:])  # the rest untouched


def test_semantics_table_shows_both_rules():
    rows = run_semantics(32, 4, 16, quantiles=(0.05,), units=16, say=lambda *_: None)
    assert sorted(rows) == [("lite", 0.05), ("netdissect", 0.05)]
    table = format_semantics(rows, 4)
    assert table.count("| lite | 0.05 |") == table.count("| netdissect | 0.05 |") == 1
    assert "planted part IoU (mean)" in table and "unique (tables)" in table


def test_semantics_workload_refuses_more_planted_units_than_the_layer_has(capsys):
    assert main(["--workload", "semantics", "--planted", "513"]) == 2
    assert "--planted 513 is more than the workload's 512 units" in capsys.readouterr().err
