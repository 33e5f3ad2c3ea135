"""A hand-built network whose unit responds exactly to one concept is found; a noise unit is not."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource
from dissectjax.models.common import sow_layer

RED = np.array(synthetic.COLORS["red"], np.float32) / 255.0


class PlantedNet(nn.Module):
    """Layer ``planted`` [B, H/2, W/2, 2]: unit 0 = redness of the pixels, unit 1 = hash noise.

    Both are fixed functions of the image (no parameters), pooled to the label resolution.
    """

    @nn.compact
    def __call__(self, images, train=False):
        x = images.astype(jnp.float32) / 255.0
        redness = nn.relu(0.25 - jnp.linalg.norm(x - RED, axis=-1))  # > 0 only near the palette's red
        noise = jnp.modf(jnp.abs(jnp.sin(x @ jnp.array([12.9898, 78.233, 37.719])) * 43758.5453))[0]
        maps = jnp.stack([redness, noise], axis=-1)
        sow_layer(self, "planted", nn.avg_pool(maps, (2, 2), strides=(2, 2)))
        return maps.mean((1, 2))


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    config = synthetic.SyntheticConfig(size=120, seed=7)
    return BrodenDataset(synthetic.ensure_broden(config, cache_dir=str(tmp_path_factory.mktemp("cache"))))


def test_planted_unit_is_found_and_noise_is_not(probe):
    red = probe.concepts.index_of("red")
    # quantile = the share of red pixels, so a perfect red detector can reach IoU 1
    total = area = 0
    for i in range(len(probe)):
        m = probe.row(i).pixel["color"][0]
        area += int(np.sum(m == probe.concepts.numbers[red]))
        total += m.size
    quantile = area / total
    assert 0.005 < quantile < 0.2
    model = PlantedNet()
    source = ModelSource(model, {}, ["planted"], (64, 64, 3))
    result = dissect(source, probe, DissectConfig(quantile=quantile, batch_size=32))["planted"]
    assert probe.concepts.names[result.labels.label[0]] == "red"
    assert result.labels.score[0] >= 0.9, result.labels.score[0]
    assert result.iou[0, red] == result.labels.score[0]
    # pure noise is no detector at the quantile that the 0.04 IoU threshold is meant for
    default = dissect(source, probe, DissectConfig(batch_size=32))["planted"]
    assert not default.labels.detector[1], (probe.concepts.names[default.labels.label[1]], default.labels.score[1])
    assert default.labels.score[1] < 0.02
    assert jax.tree.leaves(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))) == []  # truly hand-built
