"""Compositional search at the published shape of work, timed on a slice and extrapolated.

    python benchmarks/compositional_scale.py [--images 8] [--units 512] [--concepts 1200]

Mu & Andreas (2020) explain ResNet-18 layer4 (512 units) on the ADE20K part of Broden
(22,210 images, 112 x 112 masks, about 1,200 concepts), beam 5, formulas up to length 3,
in about 14 hours with 8 processes. This script runs :func:`explain_units` on bit-packed
random masks of that shape for ``--images`` images (densities like Broden's: units at the
0.005 quantile, about 3 labels per pixel) and reports the time of each length's pass. The
work of every pass is linear in the pixels (a [pixels x 2UB] x [pixels x C] product), so
the time for 22,210 images is the measured time scaled by 22,210 / images; that figure is
printed as an extrapolation, never as a measurement.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from dissectjax.analysis.compositional import Masks, explain_units, pack_bits

PUBLISHED_IMAGES = 22_210


def random_masks(images: int, units: int, concepts: int, side: int, seed: int = 0) -> Masks:
    rng = np.random.default_rng(seed)
    pixels = images * side * side
    unit_bits = rng.random((pixels, units), np.float32) < 0.005
    labels = rng.integers(0, concepts, size=(pixels, 3))  # three labels per pixel
    concept_bits = np.zeros((pixels, concepts), bool)
    np.put_along_axis(concept_bits, labels, True, axis=1)
    return Masks(pack_bits(unit_bits), pack_bits(concept_bits), pixels)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--units", type=int, default=512)
    p.add_argument("--concepts", type=int, default=1200)
    p.add_argument("--side", type=int, default=112)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--length", type=int, default=3)
    p.add_argument("--chunk-pixels", type=int, help="pixels per kernel call (default: 1 GiB of operands)")
    a = p.parse_args()
    masks = random_masks(a.images, a.units, a.concepts, a.side)
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(
        f"shape: {a.units} units, {a.concepts} concepts, {a.images} images of {a.side} x {a.side}, "
        f"beam {a.beam}, length {a.length}"
    )
    small = Masks(masks.units[:64], masks.concepts[:64], 64 * 32)
    explain_units(small, a.length, a.beam, a.chunk_pixels)  # compile at a small size (same chunk shapes)
    timings = []
    for length in range(1, a.length + 1):  # time each length's pass as the difference of whole searches
        start = time.perf_counter()
        explain_units(masks, length, a.beam, a.chunk_pixels)
        timings.append(time.perf_counter() - start)
    passes = np.diff([0.0, *timings])
    flops = [2.0 * masks.pixels * a.units * (a.concepts + 1)]
    flops += [2.0 * masks.pixels * 2 * a.units * a.beam * (a.concepts + 1)] * (a.length - 1)
    scale = PUBLISHED_IMAGES / a.images
    print(f"{'pass':>10} {'measured s':>11} {'GFLOP/s':>9} {'extrapolated to 22,210 images':>31}")
    for length, (seconds, work) in enumerate(zip(passes, flops), 1):
        rate = work / seconds / 1e9
        print(f"{'length ' + str(length):>10} {seconds:11.2f} {rate:9.1f} {seconds * scale / 3600:27.2f} h")
    total = timings[-1] * scale
    print(
        f"whole search: {timings[-1]:.2f} s measured for {a.images} images; extrapolated to {PUBLISHED_IMAGES:,} "
        f"images: {total / 3600:.2f} h ({total:.0f} s) on this device (published: about 14 h with 8 processes)"
    )


if __name__ == "__main__":
    main()
