"""The app's JSON API: live ablation equals the library's numbers; bad input gets a 4xx with a message."""

import threading

import numpy as np
import pytest
from conftest import CHECKPOINT

from dissectjax.analysis.ablation import ClassCounts, class_counts, layer_data
from dissectjax.app import AppService, create_app, load_classifier, serve
from dissectjax.app.server import is_loopback
from dissectjax.cli import build_parser
from dissectjax.report import Dissection

EVAL_IMAGES = 120


@pytest.fixture(scope="module")
def service(scene_dissection):
    return AppService(Dissection.load(scene_dissection[0]), load_classifier(CHECKPOINT, "synthetic", EVAL_IMAGES))


@pytest.fixture(scope="module")
def client(service):
    return create_app(service).test_client()


def library_ablation(classifier, layer, units, mode="zero"):
    """The library's own computation of per-class accuracy before/after (what the app must show)."""
    data = layer_data(classifier.model, classifier.variables, layer, classifier.images, classifier.labels)
    masks = np.zeros((2, data.units), np.float32)
    masks[1, units] = 1
    c = class_counts(classifier.model, classifier.variables, data, masks, mode)
    return c.recall(), c.balanced_accuracy()


def test_per_class_accuracy():
    c = ClassCounts.from_confusion(np.array([[3, 1, 0], [0, 0, 0], [2, 0, 4]]))
    np.testing.assert_allclose(c.recall(), [0.75, np.nan, 4 / 6])


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_equals_the_library(client, service, mode):
    units = [3, 17, 64]
    response = client.post("/api/ablate", json={"layer": "conv5", "units": units, "mode": mode})
    assert response.status_code == 200, response.json
    got = response.json
    accuracy, balanced = library_ablation(service.classifier, "conv5", units, mode)
    assert got["units"] == units and got["images"] == EVAL_IMAGES
    for k, row in enumerate(got["classes"]):
        assert row["class"] == service.classifier.classes[k]
        for key, value in (("accuracy_before", accuracy[0, k]), ("accuracy_after", accuracy[1, k]),
                           ("balanced_before", balanced[0, k]), ("balanced_after", balanced[1, k])):  # fmt: skip
            assert (row[key] is None) if np.isnan(value) else row[key] == pytest.approx(value, abs=1e-6)
    assert any(r["accuracy_change"] not in (0, None) for r in got["classes"]) or mode == "mean"


def test_views(client, service):
    layers = client.get("/api/layers").json
    assert [x["layer"] for x in layers["layers"]] == ["conv4", "conv5"]
    assert all(x["ablation"] for x in layers["layers"]) and len(layers["classes"]) == 12
    unit = client.get("/api/unit/conv5/7").json
    assert unit["unit"] == 7 and len(unit["per_class"]) == 12
    data = service._data("conv5")
    acts = data.acts[..., 7].mean(axis=(1, 2))
    k = int(data.labels[0])
    assert unit["per_class"][k]["mean activation"] == pytest.approx(acts[data.labels == k].mean(), abs=1e-5)
    name = unit["label"]
    found = client.get(f"/api/concept?name={name}&layer=conv5&limit=3").json
    assert len(found["units"]) == 3 and all(u["layer"] == "conv5" for u in found["units"])
    compare = client.get("/api/compare?a=conv4&b=conv5").json
    assert compare["b"]["layer"] == "conv5"
    assert client.get("/api/layer/conv5").json["units"] == 128
    assert client.get("/").data.startswith(b"<!doctype html>")


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("get", "/api/unit/conv5/128", None, 400, "out of range"),
        ("get", "/api/unit/conv5/-1", None, 400, "out of range"),
        ("get", "/api/unit/conv5/x", None, 400, "must be an integer"),
        ("get", "/api/unit/fc9/1", None, 400, "unknown layer"),
        ("get", "/api/concept?name=no-such-thing", None, 400, "unknown concept"),
        ("get", "/api/concept", None, 400, "'name' is required"),
        ("get", "/api/concept?name=red&limit=100000", None, 400, "limit must be between"),
        ("get", "/api/concept?name=red&limit=ten", None, 400, "limit must be an integer"),
        ("get", "/api/compare?a=conv5", None, 400, "'b' is required"),
        ("post", "/api/ablate", {"layer": "conv5", "units": [999]}, 400, "out of range"),
        ("post", "/api/ablate", {"layer": "conv5", "units": []}, 400, "at least one unit"),
        ("post", "/api/ablate", {"layer": "conv5", "units": ["3"]}, 400, "list of integers"),
        ("post", "/api/ablate", {"layer": "conv5", "units": [True]}, 400, "list of integers"),
        ("post", "/api/ablate", {"layer": 5, "units": [1]}, 400, "layer name"),
        ("post", "/api/ablate", {"layer": "conv5", "units": [1], "mode": "half"}, 400, "mode must be"),
        ("post", "/api/ablate", [1, 2], 400, "JSON object"),
        ("post", "/api/ablate", {"layer": "conv5", "units": list(range(20000))}, 413, "Too Large"),
        ("get", "/api/ablate", None, 405, "Method Not Allowed"),
        ("get", "/api/nothing", None, 404, "Not Found"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_message(client, method, path, body, status, message):
    response = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
    assert response.status_code == status
    assert message in response.json["error"]
    assert "Traceback" not in response.get_data(as_text=True)


def test_without_a_model_ablation_says_why(scene_dissection):
    client = create_app(AppService(Dissection.load(scene_dissection[0]))).test_client()
    assert not any(x["ablation"] for x in client.get("/api/layers").json["layers"])
    response = client.post("/api/ablate", json={"layer": "conv5", "units": [1]})
    assert response.status_code == 400 and "--checkpoint" in response.json["error"]
    assert "per_class" not in client.get("/api/unit/conv5/1").json


def test_binds_loopback_unless_told_otherwise(service):
    args = build_parser().parse_args(["serve", "DIR"])
    assert args.host == "127.0.0.1"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    bound = []

    def ready(server):
        bound.append(server.server_address)
        threading.Thread(target=server.shutdown, daemon=True).start()

    serve(service, args.host, 0, ready)  # port 0: any free port; returns once shut down
    assert bound[0][0] == "127.0.0.1" and bound[0][1] > 0


def test_serve_rejects_bad_arguments(scene_dissection, tmp_path, capsys):
    from dissectjax.cli import main

    assert main(["serve", scene_dissection[0], "--images", "0"]) == 2
    assert "argument --images: expected a positive integer" in capsys.readouterr().err
    assert main(["serve", scene_dissection[0], "--checkpoint", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "not a dissection output" in capsys.readouterr().err
    assert main(["serve", scene_dissection[0], "--port", "70000"]) == 2


def test_unit_shows_training_gradients_when_statistics_exist(service, scene_dissection, tmp_path):
    from dissectjax.train.class_stats import ClassUnitStats

    rng = np.random.default_rng(0)
    stats = ClassUnitStats(rng.integers(1, 50, 12).astype(np.int32), {"conv5": rng.normal(size=(12, 128))},
                           {"conv5": rng.normal(size=(12, 128))}, {"conv5": rng.random((12, 128))})  # fmt: skip
    stats.save(tmp_path / "stats.npz")
    loaded = ClassUnitStats.load(tmp_path / "stats.npz")
    with_stats = AppService(service.dissection, service.classifier, loaded)
    rows = create_app(with_stats).test_client().get("/api/unit/conv5/9").json["per_class"]
    expected = loaded.means("conv5")["grad"][:, 9]
    assert [r["mean gradient (training)"] for r in rows] == pytest.approx(expected, abs=1e-6)
    assert "mean gradient (training)" not in create_app(service).test_client().get("/api/unit/conv5/9").json[
        "per_class"][0]  # fmt: skip
