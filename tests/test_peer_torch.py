"""The PyTorch peer (benchmarks/peer_torch.py) counts what dissectjax counts, on the same
activations and labels, while its quantile sketch is exact; after that it samples."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed: the peer's parity tests need it")

import peer_torch  # noqa: E402  (benchmarks/, on the path through conftest)

from dissectjax.bench import broden_scale  # noqa: E402
from dissectjax.dissect import ArraySource, DissectConfig, dissect  # noqa: E402


@pytest.mark.parametrize("quantile", [0.005, 0.05])
def test_peer_counts_equal_dissectjax_counts(quantile):
    probe, acts = broden_scale(pool=24, units=16, seed=3)  # 112 x 112 labels, 1,200 concepts, 7 x 7 maps
    ours = dissect(ArraySource(acts, "layer4", len(probe), layout="nhwc"), probe,
                   DissectConfig(quantile, batch_size=8, top_k=0))["layer4"]  # fmt: skip
    pixel, image = probe._pixel, probe._image
    thresholds, intersection, unit_area, concept_area = peer_torch.dissect_arrays(
        acts, pixel, image, probe.concepts.category, probe.concepts.num_categories, quantile, batch_size=8
    )
    np.testing.assert_array_equal(thresholds, ours.thresholds)
    assert intersection.sum() > 0 and (ours.unit_area > 0).any()
    np.testing.assert_array_equal(intersection, ours.intersection)
    np.testing.assert_array_equal(unit_area, ours.unit_area)
    np.testing.assert_array_equal(concept_area, ours.concept_area)


def test_the_sketch_is_exact_until_full_then_samples():
    values = np.random.default_rng(0).gamma(2.0, size=(20_000, 3)).astype(np.float32)
    exact = np.sort(values, axis=0)[::-1][int(0.01 * len(values))]  # floor(q n) values above
    full = peer_torch.QuantileSketch(3, capacity=20_000)
    sampled = peer_torch.QuantileSketch(3, capacity=1_024)
    for chunk in np.array_split(values, 40):
        full.add(torch.as_tensor(chunk))
        sampled.add(torch.as_tensor(chunk))
    np.testing.assert_array_equal(full.thresholds(0.01).numpy(), exact)
    assert sampled.weight >= 16 and sampled.samples.shape[1] <= 1_024
    rank = (values > sampled.thresholds(0.01).numpy()).sum(axis=0) / len(values)
    np.testing.assert_allclose(rank, 0.01, atol=0.004)  # a sample's quantile, not the exact one


def test_peer_end_to_end_counts_what_its_network_computes(tmp_path):
    """Its loader, forward pass and two passes over a Broden directory give the counts of its
    statistics over the activations its network computes on the decoded rows."""
    from torch_models import build

    from dissectjax.data.broden import BrodenDataset
    from dissectjax.data.broden_disk import write_broden_disk

    root = str(tmp_path / "set")
    write_broden_disk(root, rows=6, distinct=3)
    ds = BrodenDataset(root)
    torch.manual_seed(0)
    model = build("resnet18", 5).eval()
    thresholds, counts, seconds = peer_torch.dissect_model(model, "layer4", root, 0.05, batch_size=3, workers=0,
                                                           device="cpu")  # fmt: skip
    assert set(seconds) == {"pass 1", "pass 2"}
    images = np.stack([ds.load_image(i) for i in range(len(ds))])
    with torch.no_grad():
        _, acts = model(peer_torch.preprocess(torch.as_tensor(images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    acts = acts["layer4"].permute(0, 2, 3, 1).numpy()  # [6, 7, 7, 512]
    pixel, image = zip(*(ds.labels(i) for i in range(len(ds))))
    expected = peer_torch.dissect_arrays(acts, np.stack(pixel), np.stack(image), ds.concepts.category,
                                         ds.concepts.num_categories, 0.05, batch_size=3)  # fmt: skip
    np.testing.assert_array_equal(thresholds, expected[0])
    for got, want in zip(counts, expected[1:]):
        np.testing.assert_array_equal(got, want)
