"""Compositional explanations of SceneNet conv5 units (formulas of up to 3 concepts).

    python experiments/compositional.py [--checkpoint checkpoints/scenenet] [--images 1000]

Dissects the layer (length-1 labels, timed), keeps the unit and concept masks bit-packed,
and runs the beam search (width 5, length 3) for every unit, timed. Prints the units whose
formula improves most on their single-concept IoU, and the two timings.
"""

import argparse
import time

import numpy as np

from dissectjax.analysis.compositional import collect_masks, explain_units
from dissectjax.checkpoint import load_checkpoint
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.dissect.sources import ModelSource


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/scenenet")
    p.add_argument("--layer", default="conv5")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--length", type=int, default=3)
    p.add_argument("--beam", type=int, default=5)
    a = p.parse_args()
    model, variables, meta = load_checkpoint(a.checkpoint)
    source = ModelSource(model, variables, [a.layer], tuple(meta["input_shape"]))
    probe = BrodenDataset(synthetic.ensure_broden(synthetic.SyntheticConfig(size=a.images, seed=1)))
    names = probe.concepts.names
    dissect(source, probe, DissectConfig(batch_size=100))  # compile
    start = time.perf_counter()
    result = dissect(source, probe, DissectConfig(batch_size=100))[a.layer]
    single_seconds = time.perf_counter() - start
    start = time.perf_counter()
    masks = collect_masks(source, probe, a.layer, result.thresholds)
    masks_seconds = time.perf_counter() - start
    explain_units(masks, a.length, a.beam)  # compile
    start = time.perf_counter()
    out = explain_units(masks, a.length, a.beam)
    search_seconds = time.perf_counter() - start
    # the search's length-1 IoU is unconditioned; compare formulas with the best single concept of the search
    one = out.single_iou.max(axis=1)
    gains = sorted(((f.iou - one[u], u) for u, f in enumerate(out.formulas)), reverse=True)
    print(f"{a.layer}: formulas of up to {a.length} concepts, beam {a.beam}, {a.images} probe images")
    print(f"{'unit':>4} {'dissection label (IoU)':>28} {'best single (uncond.)':>22}  formula (IoU)")
    for _, u in gains[:15]:
        f = out.formulas[u]
        label = f"{names[result.labels.label[u]]} ({result.labels.score[u]:.3f})"
        print(f"{u:>4} {label:>28} {one[u]:22.3f}  {f.describe(names)} ({f.iou:.3f})")
    mean_formula = np.mean([f.iou for f in out.formulas])
    print(f"mean IoU over {len(one)} units: best single concept {one.mean():.3f}, best formula {mean_formula:.3f}")
    print(
        f"time: dissection (length 1) {single_seconds:.1f} s; masks {masks_seconds:.1f} s; "
        f"search over all {len(one)} units {search_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
