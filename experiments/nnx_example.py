"""An NNX model, end to end: trained, dissected, ablated and transplanted with the library's functions.

    python experiments/nnx_example.py [--steps 800] [--probe 500]

Two instances of ``ConvNet`` (``dissectjax.models.nnx_convnet``: three convolutions, sown
``conv1``-``conv3``) are trained from different seeds on synthetic scenes with a plain
optax loop over ``nnx.split`` parameters. Then:

* dissection of conv3 (``ModelSource.from_nnx``: the same driver as for linen models);
* ablation (``dissectjax.edit.fold`` of a zero ``UnitEdit`` into the split parameters): the units labelled with the
  layer's most common concept, against as many random units, per-class accuracy on held-out
  scenes (seed 201);
* transplant (``dissectjax.edit.transplant``) of A's conv1 units into B's slots: conv1 reads the
  image, so a moved unit's activations, and so its dissection, must be A's exactly.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dissectjax.data import synthetic
from dissectjax.data.open import open_probe
from dissectjax.data.splits import SCENE_CLASSES, scene_images
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource
from dissectjax.edit import UnitEdit, fold, transplant
from dissectjax.models.nnx_bridge import Split, call
from dissectjax.models.nnx_convnet import ConvNet

WIDTHS = (16, 32, 64)  # small enough to train in a few CPU minutes


def train(seed: int, steps: int, batch: int = 32):
    model = ConvNet(widths=WIDTHS, rngs=nnx.Rngs(seed))
    split = Split.of(model)
    x, y = synthetic.generate_classification(synthetic.SyntheticConfig(size=4000, seed=100 + seed, image_size=64))
    tx = optax.adam(2e-3)
    variables = split.variables
    opt_state = tx.init(variables)

    def loss(v, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(call(split.merge(v), xb), yb).mean()

    @jax.jit
    def step(v, s, xb, yb):
        value, grads = jax.value_and_grad(loss)(v, xb, yb)
        updates, s = tx.update(grads, s, v)
        return optax.apply_updates(v, updates), s, value

    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        variables, opt_state, _ = step(variables, opt_state, jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    return model, split, variables, time.perf_counter() - start


def predict(split: Split, variables, images: np.ndarray) -> np.ndarray:
    run = jax.jit(lambda v, xb: call(split.merge(v), xb))
    return np.concatenate([np.asarray(jnp.argmax(run(variables, jnp.asarray(images[i : i + 250])), -1))
                           for i in range(0, len(images), 250)])  # fmt: skip


def per_class_accuracy(pred: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return np.array([np.mean(pred[labels == c] == c) if np.any(labels == c) else np.nan for c in range(k)])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--probe", type=int, default=500)
    p.add_argument("--images", type=int, default=1000, help="held-out scenes for accuracy")
    a = p.parse_args()
    names = SCENE_CLASSES
    probe, probe_name = open_probe(f"synthetic:{a.probe}")
    eval_x, eval_y = scene_images(a.images, "eval")
    config = DissectConfig(batch_size=100)

    runs = {}
    for tag, seed in (("A", 0), ("B", 1)):
        model, split, variables, seconds = train(seed, a.steps)
        trained = split.merge(variables)
        accuracy = np.mean(predict(split, variables, eval_x) == eval_y)
        result = dissect(ModelSource.from_nnx(trained, ["conv1", "conv3"], (64, 64, 3)), probe, config)
        runs[tag] = (trained, split, variables, result)
        c3 = result["conv3"]
        print(f"{tag}: trained {a.steps} steps in {seconds:.0f} s, held-out accuracy {accuracy:.3f}; "
              f"conv3 {c3.detectors}/{c3.units} detectors, {c3.unique['total']} unique; "
              f"conv1 {result['conv1'].detectors}/{result['conv1'].units}")  # fmt: skip

    # ablation: the most common conv3 concept's units vs as many random units
    model, split, variables, result = runs["A"]
    r = result["conv3"]
    labels = r.labels.label[r.labels.detector]
    if labels.size:
        concept = int(np.bincount(labels).argmax())
        units = np.flatnonzero(r.labels.detector & (r.labels.label == concept))
        base = per_class_accuracy(predict(split, variables, eval_x), eval_y, len(names))
        ablated = fold(model, variables, UnitEdit.zero("conv3", units, r.units))
        after = per_class_accuracy(predict(split, ablated, eval_x), eval_y, len(names))
        rng = np.random.default_rng(0)
        random_drops = []
        for _ in range(5):
            pick = rng.choice(r.units, len(units), replace=False)
            rand = fold(model, variables, UnitEdit.zero("conv3", pick, r.units))
            random_drops.append(base - per_class_accuracy(predict(split, rand, eval_x), eval_y, len(names)))
        random_drop = np.mean(random_drops, axis=0)
        print(f"\nablating A's {len(units)} conv3 units labelled {r.concepts.names[concept]!r} "
              f"(vs {len(units)} random units, mean of 5 draws), held-out accuracy per class:")  # fmt: skip
        print(f"{'class':12s} {'before':>7s} {'after':>7s} {'drop':>7s} {'random drop':>12s}")
        for c, name in enumerate(names):
            print(f"{name:12s} {base[c]:7.3f} {after[c]:7.3f} {base[c] - after[c]:7.3f} {random_drop[c]:12.3f}")
        print(f"{'mean':12s} {np.nanmean(base):7.3f} {np.nanmean(after):7.3f} {np.nanmean(base - after):7.3f} "
              f"{np.nanmean(random_drop):12.3f}")  # fmt: skip

    # transplant: A's best conv1 detectors into B's slots of the same index
    _, _, variables_a, result_a = runs["A"]
    model_b, split_b, variables_b, result_b = runs["B"]
    ra, rb = result_a["conv1"], result_b["conv1"]
    best = np.argsort(-ra.labels.score)[:4]
    moved = split_b.merge(transplant(model_b, variables_a, variables_b, "conv1", best, best))
    rm = dissect(ModelSource.from_nnx(moved, ["conv1"], (64, 64, 3)), probe, config)["conv1"]
    print("\ntransplant of A's conv1 units into B (same slots):")
    print(f"{'unit':>4s}  {'A label (IoU)':24s} {'B before':24s} {'B after':24s}")
    show = lambda res, u: f"{res.concepts.names[res.labels.label[u]]} ({res.labels.score[u]:.3f})"
    for u in best:
        print(f"{u:4d}  {show(ra, u):24s} {show(rb, u):24s} {show(rm, u):24s}")
    exact = all(np.array_equal(rm.intersection[u], ra.intersection[u]) for u in best)
    print(f"moved units' counts equal A's exactly: {exact}; probe set {probe_name}")


if __name__ == "__main__":
    main()
