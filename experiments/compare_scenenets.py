"""Dissects every layer of the committed scene classifiers, strong and weak, and of random init.

    python experiments/compare_scenenets.py [--images 1000]

One table: per network (validation accuracy recomputed on the validation split) and layer,
units, detectors and unique detectors under both rules (NetDissect's tables; distinct best
labels), on the 1,000-scene probe set (seed 1, the demo's).
"""

import argparse
import os

from dissectjax.checkpoint import bundled_checkpoints, init_variables, load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource
from dissectjax.evaluate import accuracy
from dissectjax.train.scenes import SceneData

NETWORKS = "scenenet-strong,scenenet-strong-seed1,scenenet,scenenet-seed1"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--networks", default=NETWORKS, help="committed checkpoints, comma-separated")
    p.add_argument("--images", type=int, default=1000, help="probe scenes (seed 1)")
    a = p.parse_args()
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.images, seed=1)))
    data = SceneData()
    val_x, val_y = synthetic.generate_classification(data.config(data.val_split))
    networks = {}
    for name in a.networks.split(","):
        model, variables, meta = load_checkpoint(os.path.join(bundled_checkpoints(), name))
        networks[name] = (model, variables, meta)
    model, _, meta = next(iter(networks.values()))
    networks["random init"] = (model, init_variables(model, tuple(meta["input_shape"]), seed=0), meta)
    print(f"{'network':<22} {'val acc':>7} {'layer':>6} {'units':>5} {'detectors':>9} {'unique (tables)':>15} "
          f"{'unique (best label)':>19}")  # fmt: skip
    for name, (model, variables, meta) in networks.items():
        acc = accuracy(model, variables, val_x, val_y)
        source = ModelSource(model, variables, list(model.layer_names), tuple(meta["input_shape"]))
        results = dissect(source, probe, DissectConfig(batch_size=100))
        for layer, r in results.items():
            print(f"{name:<22} {acc:7.3f} {layer:>6} {r.units:5d} {r.detectors:9d} {r.unique_tables['total']:15d} "
                  f"{r.unique['total']:19d}")  # fmt: skip


if __name__ == "__main__":
    main()
