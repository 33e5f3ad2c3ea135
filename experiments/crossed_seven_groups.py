"""Crossed sevens on an unsaturated LeNet-5: is the knowledge in a small group of units?

    python experiments/crossed_seven_groups.py [--seeds 0,1,2] [--train 3000] [--epochs 1] [--crossed 0.05]

The sequel to experiments/crossed_seven.py, whose LeNet-5 reached 100% held-out accuracy, so
that no single ablation changed a prediction. Here the run is stopped before saturation
(fewer digits and epochs, crossed 7s rare). Per seed:

1. Train LeNet-5 on styled digits, gathering per-class unit statistics in the train step.
2. Candidates from the statistics alone (no style tags): the (unit, class 7) anomalies of
   one layer (fc1, 120 units, where the single-unit study found its candidates), in rank
   order.
3. Zero the top-k candidates together (k = 1, 2, 4, 8) and, as the baseline, k random
   units of the same layer (10 draws, candidates excluded). Measure the accuracy drop on
   held-out crossed, plain and hooked 7s and on the other digits (6,000 held-out digits, in
   which 40% of the 7s are crossed, so each style's accuracy rests on a few hundred 7s).

Prints one table per seed and the mean and spread over seeds.
"""

import argparse

import numpy as np

from dissectjax.analysis.specialize import accuracy_by_group, anomalies, train_with_stats
from dissectjax.data.digits import StyledDigitsConfig, styled_digits, with_rates
from dissectjax.edit import UnitEdit
from dissectjax.models import build_model
from dissectjax.train import TrainConfig

LAYERS = ("conv2", "fc1", "fc2")
GROUPS = ("7-crossed", "7-plain", "7-hook", "others")
SIZES = (1, 2, 4, 8)


def group_accuracy(model, params, x, y, tags, edit=None) -> dict[str, float]:
    """Accuracy on each 7 style and on all other digits together."""
    acc = accuracy_by_group(model, params, x, y, tags, edit)
    others = [t for t in acc if not t.startswith("7")]
    counts = {t: int(np.sum(tags == t)) for t in others}
    return {**{g: acc[g] for g in GROUPS[:3]}, "others": sum(acc[t] * counts[t] for t in others) / sum(counts.values())}


def one_seed(seed: int, a) -> dict:
    hook = 0.2
    rates = {"plain": 1 - a.crossed - hook, "crossed": a.crossed, "hook": hook}
    x, y, _ = styled_digits(with_rates(StyledDigitsConfig(size=a.train, seed=100 + seed), 7, rates))
    # held out: the same styles, crossed 7s more often, so that each style's accuracy rests on many digits
    test_rates = {"plain": 1 - a.test_crossed - hook, "crossed": a.test_crossed, "hook": hook}
    xt, yt, tt = styled_digits(with_rates(StyledDigitsConfig(size=a.test, seed=200), 7, test_rates))
    model = build_model("lenet5")
    params, stats, _ = train_with_stats(model, x, y, LAYERS, TrainConfig(seed=seed, epochs=a.epochs))
    base = group_accuracy(model, params, xt, yt, tt)
    layer = a.layer
    ranked = sorted((r for r in anomalies(stats, layer) if r["class"] == 7), key=lambda r: -r["score"])
    candidates = [r["unit"] for r in ranked]
    units = int(stats.means(layer)["act"].shape[1])
    rng = np.random.default_rng(seed)
    rows = {}
    for k in SIZES:
        if len(candidates) < k:
            break
        picked = group_accuracy(model, params, xt, yt, tt, UnitEdit.zero(layer, candidates[:k], units))
        others = np.setdiff1d(np.arange(units), candidates[:k])
        draws = [group_accuracy(model, params, xt, yt, tt,
                                UnitEdit.zero(layer, rng.choice(others, k, replace=False).tolist(), units))
                 for _ in range(a.random_draws)]  # fmt: skip
        rows[k] = {
            "candidates": {g: base[g] - picked[g] for g in GROUPS},
            "random": {g: float(np.mean([base[g] - d[g] for d in draws])) for g in GROUPS},
            "units": candidates[:k],
        }
    return {"seed": seed, "layer": layer, "base": base, "rows": rows}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=6000)
    p.add_argument("--test-crossed", type=float, default=0.4, help="share of held-out 7s drawn crossed")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--crossed", type=float, default=0.05, help="share of training 7s drawn crossed")
    p.add_argument("--random-draws", type=int, default=10)
    p.add_argument("--layer", default="fc1", choices=LAYERS)
    a = p.parse_args()
    results = [one_seed(int(s), a) for s in a.seeds.split(",")]
    for r in results:
        b = r["base"]
        print(f"\nseed {r['seed']}: held-out accuracy " + ", ".join(f"{g} {b[g]:.3f}" for g in GROUPS)
              + f"; candidates in {r['layer']}")  # fmt: skip
        print("| k | units | " + " | ".join(f"{g} (cand / random)" for g in GROUPS) + " |")
        for k, row in r["rows"].items():
            cells = " | ".join(f"{row['candidates'][g]:.3f} / {row['random'][g]:.3f}" for g in GROUPS)
            print(f"| {k} | {r['layer']}:{','.join(map(str, row['units']))} | {cells} |")
    print(f"\nmean (spread: min .. max) over {len(results)} seeds, accuracy drop when zeroed")
    print("| k | " + " | ".join(f"{g} candidates | {g} random" for g in GROUPS) + " |")
    for k in SIZES:
        have = [r["rows"][k] for r in results if k in r["rows"]]
        if not have:
            continue
        cells = []
        for g in GROUPS:
            for kind in ("candidates", "random"):
                v = np.array([h[kind][g] for h in have])
                cells.append(f"{v.mean():.3f} ({v.min():.3f} .. {v.max():.3f})")
        print(f"| {k} | " + " | ".join(cells) + f" |  ({len(have)} seeds)")
    bases = np.array([[r["base"][g] for g in GROUPS] for r in results])
    print("held-out accuracy before ablation, mean over seeds: "
          + ", ".join(f"{g} {v:.3f}" for g, v in zip(GROUPS, bases.mean(0))))  # fmt: skip


if __name__ == "__main__":
    main()
