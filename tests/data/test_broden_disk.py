"""The on-disk Broden-size workload: what the generator writes, the reader reads back."""

import csv
import os

import numpy as np

from dissectjax.data.broden import BrodenDataset
from dissectjax.data.broden_disk import (
    BRODEN_CATEGORIES,
    BRODEN_PIXEL_LAYERS,
    broden_concepts,
    broden_labels,
    ensure_broden_disk,
    write_broden_disk,
)


def test_the_reader_reads_back_every_row_the_generator_wrote(tmp_path):
    root = str(tmp_path / "set")
    write_broden_disk(root, rows=10, distinct=4, seed=5)
    concepts = broden_concepts()
    pixel, image = broden_labels(np.random.default_rng(5), 4, concepts)  # the distinct rows' labels, redrawn
    ds = BrodenDataset(root)
    assert len(ds) == 10 and ds.concepts.names == concepts.names
    np.testing.assert_array_equal(ds.concepts.category, concepts.category)
    assert list(ds.concepts.categories) == list(BRODEN_CATEGORIES)
    assert ds.shapes.tolist() == [[224, 224, 112, 112]] * 10
    for i in range(10):
        got_pixel, got_image = ds.labels(i)
        # the reader gives each category its most PNGs' slots, in column order: object (two), part, material,
        # color, the generator's layer order (a row with one object map leaves the second slot empty, -1)
        np.testing.assert_array_equal(got_pixel, pixel[i % 4])
        assert sorted(got_image[got_image >= 0].tolist()) == sorted(image[i % 4][image[i % 4] >= 0].tolist())
        picture = ds.load_image(i)
        assert picture.shape == (224, 224, 3) and picture.dtype == np.uint8
        np.testing.assert_array_equal(picture, ds.load_image(i % 4))  # rows cycle through the distinct files
    with open(os.path.join(root, "index.csv")) as f:
        names = [row["image"] for row in csv.DictReader(f)]
    assert names == [f"r{i % 4:05d}.jpg" for i in range(10)]
    pngs = sum(int((pixel[d, j] >= 0).any()) for d in range(4) for j in range(len(BRODEN_PIXEL_LAYERS)))
    assert len(os.listdir(os.path.join(root, "images"))) == 4 + pngs  # files for the distinct rows only


def test_labels_are_as_dense_as_broden_configures_them():
    concepts = broden_concepts()
    pixel, image = broden_labels(np.random.default_rng(0), 64, concepts)
    assert len(concepts) == 1200
    covered = (pixel >= 0).mean(axis=(0, 2, 3))  # per layer
    np.testing.assert_allclose(covered[[0, 2, 3, 4]], [0.9, 0.35, 0.5, 1.0], atol=0.03)
    assert 0.1 < covered[1] < 0.4  # the second object layer, in about 30% of rows
    category = concepts.category
    for layer, name in enumerate(BRODEN_PIXEL_LAYERS):
        labels = pixel[:, layer][pixel[:, layer] >= 0]
        assert (category[labels] == list(BRODEN_CATEGORIES).index(name)).all()
    assert (image[:, 0] >= 0).all() and 0.1 < (image[:, 1] >= 0).mean() < 0.35


def test_the_set_is_generated_once_and_cached(tmp_path):
    first = ensure_broden_disk(6, distinct=3, cache_dir=str(tmp_path))
    stamp = os.path.getmtime(os.path.join(first, "index.csv"))
    assert ensure_broden_disk(6, distinct=3, cache_dir=str(tmp_path)) == first
    assert os.path.getmtime(os.path.join(first, "index.csv")) == stamp
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(first)]  # no temporary directory left behind
