"""Emergence: the committed scene classifier has more detectors than its random-init twin."""

import pytest

from dissectjax.checkpoint import demo_checkpoint, init_variables, load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource

CHECKPOINT = demo_checkpoint()
LAYERS = ["conv4", "conv5"]


@pytest.fixture(scope="module")
def dissections(tmp_path_factory):
    model, trained, meta = load_checkpoint(CHECKPOINT)
    shape = tuple(meta["input_shape"])
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=200, seed=1),
                                                  cache_dir=str(tmp_path_factory.mktemp("cache"))))  # fmt: skip
    config = DissectConfig(batch_size=100)
    return {
        tag: dissect(ModelSource(model, variables, LAYERS, shape), probe, config)
        for tag, variables in (("trained", trained), ("random", init_variables(model, shape, seed=0)))
    }


def test_checkpoint_is_a_trained_classifier():
    _, _, meta = load_checkpoint(CHECKPOINT)
    assert meta["model"] == "scenenet" and meta["val_accuracy"] > 0.5  # 12 classes: chance is 0.083


@pytest.mark.parametrize("layer", LAYERS)
def test_trained_has_more_detectors_than_random(dissections, layer):
    trained, random = dissections["trained"][layer], dissections["random"][layer]
    assert trained.detectors >= random.detectors + 10, (trained.detectors, random.detectors)
    assert trained.unique["total"] >= random.unique["total"] + 5, (trained.unique, random.unique)
    # object and texture detectors are what scene training should grow
    assert trained.unique["object"] + trained.unique["texture"] > random.unique["object"] + random.unique["texture"]
