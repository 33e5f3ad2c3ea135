"""`dissectjax bench --workload semantics`: both counting rules on one planted fixture, one table."""

import numpy as np

from dissectjax.bench import format_semantics, main, plant_units, semantics_fixture


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


def test_semantics_table_has_a_row_per_rule_and_quantile():
    row = {"detectors": 3, "unique (best label)": 2, "unique (tables)": 2, "planted IoU (mean)": 0.25,
           "planted part IoU (mean)": 0.5, "planted found": 1, "pass 1 (thresholds)": 10.0,
           "pass 2 (tally)": 5.0}  # fmt: skip
    rows = {(semantics, q): row for q in (0.005, 0.05) for semantics in ("netdissect", "lite")}
    table = format_semantics(rows, 4).splitlines()
    assert len(table) == 2 + 4 and table[2].startswith("| netdissect | 0.005 | 3 | 2 | 2 | 0.250 | 0.500 | 1/4 |")


def test_semantics_workload_refuses_more_planted_units_than_the_layer_has(capsys):
    assert main(["--workload", "semantics", "--planted", "513"]) == 2
    assert "--planted 513 is more than the workload's 512 units" in capsys.readouterr().err


def test_broden_scale_times_both_and_their_counts_agree():
    """`bench --workload broden-scale` (small): dissectjax and the Lite-style loop on the same rows,
    the ratio of their rates, and dissectjax's counts at the loop's thresholds within one pixel
    (they interpolate differently: a pixel that rounds across its threshold may differ)."""
    from dissectjax.bench import run_broden_scale

    rows, extra = run_broden_scale(32, 16, 16, 8, 0.05, say=lambda *_: None)
    for stage, ratio in rows["ratio"].items():
        assert ratio == rows["dissectjax"][stage] / rows["numpy baseline (Lite-style)"][stage]
    assert extra["baseline images"] == 16 and extra["max |intersection difference| vs baseline"] <= 1
