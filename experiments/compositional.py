"""Compositional explanations of SceneNet conv5 units (formulas of up to 3 concepts).

    python experiments/compositional.py [--checkpoint checkpoints/scenenet] [--images 1000]

Dissects the layer (length-1 labels, timed), keeps the unit and concept masks bit-packed,
and runs the beam search (width 5, length 3) for every unit, timed. Prints the units whose
formula improves most on their single-concept IoU, and the two timings.
"""

import argparse
import time

import jax.numpy as jnp
import numpy as np

from dissectjax.checkpoint import load_checkpoint
from dissectjax.compositional import collect_masks, explain_unit
from dissectjax.compositional import iou as formula_iou
from dissectjax.data import synthetic
from dissectjax.data.broden import BrodenDataset
from dissectjax.dissect import DissectConfig, dissect
from dissectjax.sources import ModelSource


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
    unit_bits, concept_bits = collect_masks(source, probe, a.layer, result.thresholds)
    explain_unit(unit_bits[0], concept_bits, a.length, a.beam)  # compile
    masks_seconds = time.perf_counter() - start
    start = time.perf_counter()
    formulas = [explain_unit(unit_bits[u], concept_bits, a.length, a.beam) for u in range(len(unit_bits))]
    search_seconds = time.perf_counter() - start
    # the search's length-1 IoU is unconditioned; compare formulas with the best single concept of the search
    single = [f.terms[:1] for f in formulas]
    gains = []

    for u, f in enumerate(formulas):
        one = float(formula_iou(jnp.asarray(unit_bits[u]), jnp.asarray(concept_bits[single[u][0][1]])))
        gains.append((f.iou - one, u, one, f))
    gains.sort(reverse=True)
    print(f"{a.layer}: formulas of up to {a.length} concepts, beam {a.beam}, {a.images} probe images")
    print(f"{'unit':>4} {'dissection label (IoU)':>28} {'best single (uncond.)':>22}  formula (IoU)")
    for _, u, one, f in gains[:15]:
        label = f"{names[result.labels.label[u]]} ({result.labels.score[u]:.3f})"
        print(f"{u:>4} {label:>28} {one:22.3f}  {f.describe(names)} ({f.iou:.3f})")
    mean_one = np.mean([g[2] for g in gains])
    mean_formula = np.mean([g[3].iou for g in gains])
    print(f"mean IoU over {len(formulas)} units: best single concept {mean_one:.3f}, best formula {mean_formula:.3f}")
    print(
        f"time: dissection (length 1) {single_seconds:.1f} s; masks {masks_seconds:.1f} s; "
        f"search over all units {search_seconds:.1f} s ({search_seconds / len(formulas) * 1000:.0f} ms per unit)"
    )


if __name__ == "__main__":
    main()
