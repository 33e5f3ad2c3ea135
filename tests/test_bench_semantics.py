"""`dissectjax bench --workload semantics`: both counting rules on one planted fixture, one table."""

import numpy as np

from dissectjax.bench import main, plant_units, semantics_fixture


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


def test_semantics_table_shows_both_rules(capsys):
    assert main(["bench", "--workload", "semantics", "--images", "48", "--planted", "8", "--batch-size", "16"][1:]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| netdissect") or line.startswith("| lite")]
    assert len(rows) == 4  # both rules at q = 0.005 and 0.05
    assert "planted part IoU (mean)" in out and "unique (tables)" in out
