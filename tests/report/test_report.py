"""The static report and the notebook views: exact masks, true headers, self-contained HTML."""

import csv
import json
import os
import re

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CHECKPOINT

from dissectjax.checkpoint import load_checkpoint
from dissectjax.cli import main
from dissectjax.models.layers import activation_fn
from dissectjax.report import ConceptQuery, Dissection, LayerComparison, LayerView, UnitView
from dissectjax.report.images import OUTLINE, overlay
from dissectjax.stats.upsample import upsample


@pytest.fixture(scope="module")
def dissection(scene_dissection):
    return Dissection.load(scene_dissection[0])


def test_top_masks_are_the_dissections_masks(dissection, scene_dissection):
    """The report's mask of a top image is the tally's mask: the model's map, upsampled, > threshold."""
    _, dataset = scene_dissection
    model, variables, _ = load_checkpoint(CHECKPOINT)
    layer = "conv5"
    r = dissection.layer(layer)
    forward = activation_fn(model, variables, [layer], jnp.zeros((1, 64, 64, 3), jnp.uint8), jit=True)
    checked = 0
    for unit in (0, int(np.argmax(r.labels.score)), r.units - 1):
        images, masks = dissection.top_masks(layer, unit)
        rows = r.top_images[unit]
        assert len(images) == len(masks) == np.sum(rows >= 0) == 8
        for image, mask, row in zip(images, masks, rows):
            acts = forward(variables, jnp.asarray(dataset.load_image(int(row))[None]))[layer]  # [1, h, w, U]
            expected = np.asarray(upsample(acts, dataset.label_size(int(row))))[0, ..., unit] > r.thresholds[unit]
            np.testing.assert_array_equal(mask, expected)
            assert image.shape == (*dataset.image_size(int(row)), 3)
            checked += 1
    assert checked == 24


def test_top_images_are_ordered_by_maximum(dissection):
    r = dissection.layer("conv5")
    assert np.all(np.diff(r.top_activations, axis=1) <= 0)
    np.testing.assert_allclose(r.top_maps.max(axis=(2, 3)), r.top_activations)


def test_overlay_dims_outside_and_outlines_the_edge():
    image = np.full((6, 6, 3), 200, np.uint8)
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True  # one mask pixel -> a 2x2 block at 6x6
    out = overlay(image, mask)
    inside = np.zeros((6, 6), bool)
    inside[2:4, 2:4] = True
    assert np.all(out[~inside] == 60)  # 200 * 0.3
    assert np.all(out[inside] == OUTLINE)  # a 2x2 block is all edge
    big = np.zeros((6, 6), bool)
    big[1:5, 1:5] = True
    out = overlay(image, big)
    assert np.all(out[2:4, 2:4] == 200) and np.all(out[1, 1:5] == OUTLINE)


def test_report_headers_and_cards_match_units_csv(scene_dissection):
    out, _ = scene_dissection
    with open(os.path.join(out, "report.html")) as f:
        document = f.read()
    for layer in ("conv4", "conv5"):
        with open(os.path.join(out, layer, "units.csv")) as f:
            rows = list(csv.DictReader(f))
        detectors = [r for r in rows if float(r["score"]) >= 0.04]
        concepts = {r["label"] for r in detectors}
        header = f"{layer}: {len(detectors)}/{len(rows)} units are detectors covering {len(concepts)} concept"
        assert header in document
        summary = json.loads(open(os.path.join(out, "summary.json")).read())["layers"][layer]
        unique = (f"unique detectors: best-label rule {summary['unique_detectors']['total']}",
                  f"NetDissect-tables rule {summary['unique_detectors_tables']['total']}")  # fmt: skip
        assert all(part in document for part in unique)
        cards = re.findall(rf'<div class="(card[^"]*)" data-layer="{layer}" data-unit="(\d+)"', document)
        assert [int(u) for _, u in cards] == list(range(len(rows)))
        greyed = {int(u) for css, u in cards if "not-detector" in css}
        assert greyed == {int(r["unit"]) for r in rows if float(r["score"]) < 0.04}
        for r in detectors[:5]:
            assert f'data-unit="{r["unit"]}" data-iou="{float(r["score"]):.6f}" data-label="{r["label"]}"' in document


def test_report_is_self_contained(scene_dissection):
    out, _ = scene_dissection
    with open(os.path.join(out, "report.html")) as f:
        document = f.read()
    sources = re.findall(r'(?:src|href)="([^"]*)"', document)
    assert sources and all(s.startswith("data:") for s in sources), {
        s[:40] for s in sources if not s.startswith("data:")
    }
    assert "http://" not in document and "https://" not in document
    assert os.path.getsize(os.path.join(out, "plots", "detectors_per_category.png")) > 1000


def test_report_command(scene_dissection, tmp_path, capsys):
    out, _ = scene_dissection
    target = tmp_path / "r.html"
    assert main(["report", out, "--out", str(target)]) == 0
    assert target.read_text().startswith("<!doctype html>")
    assert (tmp_path / "plots" / "detectors_per_category.png").is_file()
    assert main(["report", str(tmp_path)]) == 2
    assert "not a dissection output" in capsys.readouterr().err


def test_views_answer_from_the_counts(dissection):
    r = dissection.layer("conv5")
    c = int(r.labels.label[int(np.argmax(r.labels.score))])
    concept = r.concepts.names[c]
    query = ConceptQuery(dissection, concept, limit=5).to_json()
    best = max(((name, u) for name in dissection.layers for u in range(dissection.layer(name).units)),
               key=lambda x: dissection.layer(x[0]).iou[x[1], c])  # fmt: skip
    assert (query["units"][0]["layer"], query["units"][0]["unit"]) == best
    assert [u["iou"] for u in query["units"]] == sorted((u["iou"] for u in query["units"]), reverse=True)

    unit = UnitView(dissection, "conv5", 3).to_json()
    assert unit["concepts"][0]["iou"] == round(float(r.iou[3].max()), 6)
    assert unit["top_images"].startswith("data:image/jpeg;base64,")

    both = LayerComparison(dissection, "conv4", "conv5").to_json()
    assert both["b"]["detectors"] == r.detectors
    assert sum(row["b_detectors"] for row in both["per_category"]) == r.detectors
    assert sum(row["b_unique"] for row in both["per_category"]) == r.unique["total"]
    assert sum(row["b_unique_tables"] for row in both["per_category"]) == r.unique_tables["total"]
    assert both["b"]["unique_tables"] == r.unique_tables["total"] >= r.unique["total"]

    layer = LayerView(dissection, "conv5")
    assert sum(n for rows in layer.concept_counts().values() for _, n in rows) == r.detectors
    for view in (layer, UnitView(dissection, "conv5", 3), ConceptQuery(dissection, concept)):
        assert view._repr_html_().startswith("<style>")


def test_views_reject_bad_input(dissection):
    from dissectjax.errors import DissectError

    with pytest.raises(DissectError, match="out of range"):
        UnitView(dissection, "conv5", 128)
    with pytest.raises(DissectError, match="unknown layer 'fc9'; layers: conv4, conv5"):
        dissection.layer("fc9")
    with pytest.raises(DissectError, match="unknown concept 'rde'"):
        ConceptQuery(dissection, "rde").rows()
