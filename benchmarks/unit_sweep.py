"""Single-unit ablation sweep: every unit of a layer ablated alone, per-class balanced accuracy.

    python benchmarks/unit_sweep.py [--model resnet18] [--layer layer4] [--images 2000] [--size 112]
                                    [--classes 1000] [--chunk 64] [--batch 250]

What ``dissectjax ablate --single-unit`` runs (:func:`dissectjax.analysis.ablation.single_unit_damage`):
the layer's activations are computed once, then for each chunk of edits (vmapped) only the
network above the layer runs, and the per-class counts come back (no K x K confusion
matrices). Random weights and random images: the time does not depend on the values. It
prints images x units per second for the sweep (the U + 1 edits, baseline included), after
one warm-up of the same sweep that compiles every program, and the time of the one forward
pass that stores the layer.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import numpy as np

from dissectjax.analysis.ablation import layer_data, single_unit_damage
from dissectjax.checkpoint import init_variables
from dissectjax.models import build_model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--layer", default="layer4")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=64, help="edits per compiled call")
    p.add_argument("--batch", type=int, default=250, help="images per compiled call")
    a = p.parse_args(argv)
    model = build_model(a.model, num_classes=a.classes)
    variables = init_variables(model, (a.size, a.size, 3), seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (a.images, a.size, a.size, 3), dtype=np.uint8)
    labels = rng.integers(0, a.classes, a.images)

    start = time.perf_counter()
    data = layer_data(model, variables, a.layer, images, labels, batch=a.batch)
    forward = time.perf_counter() - start
    warm = data.__class__(data.layer, data.acts[: a.batch], data.images[: a.batch], data.labels[: a.batch],
                          data.num_classes, data.above)  # fmt: skip
    single_unit_damage(model, variables, warm, chunk=a.chunk, batch=a.batch)  # compiles every program
    start = time.perf_counter()
    base, damage = single_unit_damage(model, variables, data, chunk=a.chunk, batch=a.batch)
    sweep = time.perf_counter() - start
    edits = data.units + 1
    print(f"{a.model} {a.layer} ({data.units} units, maps {data.acts.shape[1]}x{data.acts.shape[2]}), "
          f"{a.images} images at {a.size} px, {a.classes} classes; {jax.devices()[0].device_kind} "
          f"({platform.processor() or platform.machine()}), jax {jax.__version__}")  # fmt: skip
    print(f"runs only the layers above: {data.above}")
    print(f"forward pass storing the layer: {forward:.1f} s ({a.images / forward:.0f} images/s)")
    print(f"sweep of {edits} edits: {sweep:.1f} s = {a.images * edits / sweep:,.0f} images x units per second")
    assert damage.shape == (data.units, a.classes) and np.isfinite(base[~np.isnan(base)]).all()


if __name__ == "__main__":
    main()
