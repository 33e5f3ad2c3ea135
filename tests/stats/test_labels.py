"""Unique detectors under both named rules (docs/ARCHITECTURE.md, Semantics 5), both comparisons.

best label (NetDissect-Lite): distinct labels among detectors, a unit's label its best concept
over all categories. NetDissect tables (CVPR 2017): per category k, the distinct best concepts
of category k among units whose IoU with that concept passes; summed over categories.
"""

import csv
import operator

import numpy as np
import pytest

from dissectjax.data.concepts import Concepts
from dissectjax.dissect.config import DissectConfig
from dissectjax.dissect.result import LayerResult
from dissectjax.errors import DissectError
from dissectjax.results import unique_from_tally_csv, write_units
from dissectjax.stats.labels import (
    DETECTOR_RULES,
    label_units,
    passes,
    unique_detectors,
    unique_detectors_tables,
)

COMPARE = {">=": operator.ge, ">": operator.gt}
THRESHOLD = 0.04


def random_table(seed: int, units: int = 24, concepts: int = 40, categories: int = 4):
    """An IoU table [U, C] on a coarse grid around the threshold (ties, and values exactly at it),
    and concept_category [C]; the last category has no concepts."""
    rng = np.random.default_rng(seed)
    grid = np.round(np.arange(8) * 0.01, 2)  # 0 .. 0.07
    density = rng.uniform(0.02, 0.3, (units, 1))  # sparse rows have maxima near the threshold
    table = rng.choice(grid, size=(units, concepts)) * (rng.random((units, concepts)) < density)
    return table, rng.integers(0, categories - 1, concepts)


def brute_force(table, concept_category, categories, threshold, rule):
    """Both rules by plain loops: ({category: n, 'total'}, {category: n, 'total'})."""
    passes_ = COMPARE[rule]
    best_label = {k: set() for k in range(len(categories))}
    tables = {k: set() for k in range(len(categories))}
    for u in range(table.shape[0]):
        label = max(range(table.shape[1]), key=lambda c: (table[u, c], -c))  # ties: the lower index
        if passes_(table[u, label], threshold):
            best_label[int(concept_category[label])].add(label)
        for k in range(len(categories)):
            in_k = [c for c in range(table.shape[1]) if concept_category[c] == k]
            if in_k:
                best = max(in_k, key=lambda c: (table[u, c], -c))
                if passes_(table[u, best], threshold):
                    tables[k].add(best)

    def counts(sets):
        out = {name: len(sets[k]) for k, name in enumerate(categories)}
        return {**out, "total": sum(out.values())}

    return counts(best_label), counts(tables)


@pytest.mark.parametrize("rule", DETECTOR_RULES)
@pytest.mark.parametrize("seed", range(6))
def test_both_rules_match_brute_force(seed, rule):
    categories = ["color", "object", "part", "empty"]
    table, concept_category = random_table(seed)
    labels = label_units(table, concept_category, len(categories), THRESHOLD, rule)
    np.testing.assert_array_equal(labels.detector, [COMPARE[rule](s, THRESHOLD) for s in table.max(1)])
    best_label, tables = brute_force(table, concept_category, categories, THRESHOLD, rule)
    assert unique_detectors(labels, concept_category, categories) == best_label
    assert unique_detectors_tables(table, labels, categories, THRESHOLD, rule) == tables
    # a detector's label is its category's best concept, so the tables rule never counts fewer
    assert all(tables[c] >= best_label[c] for c in best_label)


def test_the_comparison_matters_only_at_the_threshold():
    table, concept_category = random_table(0)
    categories = ["color", "object", "part", "empty"]
    at = label_units(table, concept_category, 4, THRESHOLD, ">=")
    above = label_units(table, concept_category, 4, THRESHOLD, ">")
    np.testing.assert_array_equal(at.detector & ~above.detector, at.score == THRESHOLD)
    assert np.any(at.score == THRESHOLD)  # the fixture exercises the tie
    shifted = unique_detectors_tables(table, above, categories, THRESHOLD + 0.005, ">=")
    assert unique_detectors_tables(table, above, categories, THRESHOLD, ">") == shifted  # grid step 0.01


def test_bad_comparison_is_refused():
    with pytest.raises(DissectError, match=r"detector rule must be one of '>=', '>', got '=>'"):
        passes(np.zeros(2), THRESHOLD, "=>")
    with pytest.raises(DissectError, match=r"detector_rule must be one of '>=', '>', got '=>'"):
        DissectConfig(detector_rule="=>")
    assert DissectConfig().detector_rule == ">="


# A tally in NetDissect's tally.csv layout (1-based units), IoU threshold 0.04:
#   unit  label (score)    object        texture           color
#   1     dog (0.20)       dog 0.20      striped 0.06      red 0.01
#   2     dog (0.10)       dog 0.10      dotted 0.05       blue 0.02
#   3     striped (0.08)   car 0.03      striped 0.08      red 0.05
#   4     tree (0.04)      tree 0.04     grid 0.02         green 0.01
#   5     grid (0.04)      car 0.01      grid 0.04         red 0.03
#   6     blue (0.03)      sky 0.02      dotted 0.01       blue 0.03
# best label, >=: object {dog, tree}, texture {striped, grid}          -> 4
# tables,     >=: object {dog, tree}, texture {striped, dotted, grid}, color {red} -> 6
# best label, > : object {dog}, texture {striped}                      -> 2
# tables,     > : object {dog}, texture {striped, dotted}, color {red} -> 4
TALLY = [
    (("dog", 0.20), ("striped", 0.06), ("red", 0.01)),
    (("dog", 0.10), ("dotted", 0.05), ("blue", 0.02)),
    (("car", 0.03), ("striped", 0.08), ("red", 0.05)),
    (("tree", 0.04), ("grid", 0.02), ("green", 0.01)),
    (("car", 0.01), ("grid", 0.04), ("red", 0.03)),
    (("sky", 0.02), ("dotted", 0.01), ("blue", 0.03)),
]
TALLY_CATEGORIES = ["object", "texture", "color"]
EXPECTED = {
    ">=": {"best_label": {"object": 2, "texture": 2, "color": 0, "total": 4},
           "tables": {"object": 2, "texture": 3, "color": 1, "total": 6}},
    ">": {"best_label": {"object": 1, "texture": 1, "color": 0, "total": 2},
          "tables": {"object": 1, "texture": 2, "color": 1, "total": 4}},
}  # fmt: skip


def write_netdissect_tally(path, rows, categories):
    """NetDissect's tally.csv: unit,category,label,score, then per category label, truth,
    activation, intersect, iou (the counts are placeholders; the rules read labels and IoUs)."""
    header = ["unit", "category", "label", "score"]
    for cat in categories:
        header += [f"{cat}-label", f"{cat}-truth", f"{cat}-activation", f"{cat}-intersect", f"{cat}-iou"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for u, row in enumerate(rows):
            k = max(range(len(row)), key=lambda i: (row[i][1], -i))
            out = [u + 1, categories[k], row[k][0], f"{row[k][1]:.6f}"]
            for name, iou in row:
                out += [name, 1000, 500, 100, f"{iou:.6f}"]
            w.writerow(out)


@pytest.mark.parametrize("rule", DETECTOR_RULES)
def test_netdissect_tally_csv_gives_both_rules(tmp_path, rule):
    path = tmp_path / "tally.csv"
    write_netdissect_tally(path, TALLY, TALLY_CATEGORIES)
    got = unique_from_tally_csv(str(path), THRESHOLD, rule)
    assert got == EXPECTED[rule]
    assert got["tables"]["total"] - got["best_label"]["total"] == 2


@pytest.mark.parametrize("rule", DETECTOR_RULES)
def test_units_csv_reads_back_as_the_layer_result(tmp_path, rule):
    """dissectjax's units.csv (the tally layout plus a threshold column) gives the in-memory counts."""
    categories = ("color", "object", "part", "empty")
    table, concept_category = random_table(7)
    concepts = Concepts(np.arange(1, table.shape[1] + 1), tuple(f"c{i}" for i in range(table.shape[1])),
                        concept_category, categories)  # fmt: skip
    labels = label_units(table, concept_category, len(categories), THRESHOLD, rule)
    units, n = table.shape
    result = LayerResult(
        name="layer", concepts=concepts, thresholds=np.ones(units, np.float32),
        intersection=np.zeros((units, n), np.int64), unit_area=np.zeros((units, len(categories)), np.int64),
        concept_area=np.zeros(n, np.int64), iou=table, labels=labels,
        unique=unique_detectors(labels, concept_category, categories),
        unique_tables=unique_detectors_tables(table, labels, categories, THRESHOLD, rule),
        quantile=0.005, iou_threshold=THRESHOLD, detector_rule=rule, condition=True, images=1, seconds=1.0,
    )  # fmt: skip
    write_units(str(tmp_path / "units.csv"), result)
    got = unique_from_tally_csv(str(tmp_path / "units.csv"), THRESHOLD, rule)
    assert got == {"best_label": result.unique, "tables": result.unique_tables}


def test_tally_csv_without_iou_columns_is_refused(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("unit,category,label,score,object-label\n1,object,dog,0.1,dog\n")
    with pytest.raises(DissectError, match="no column 'object-iou'"):
        unique_from_tally_csv(str(path), THRESHOLD, ">")
