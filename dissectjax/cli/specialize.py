"""``dissectjax specialize``: which units serve which class (per-class statistics gathered in training).

Trains LeNet-5 with the statistics (or loads a checkpoint and its saved statistics) and
writes into ``--out``: ``stats.npz``, ``checkpoint/`` (when trained), per layer
``units-LAYER.csv`` (per unit and class: count, mean gradient, push, mean activation, mean
rectified activation) and ``weighted-LAYER.png`` (the rectified-activation-weighted mean
input per class of the layer's top anomalous units), ``top-LAYER.png`` (their top-activating
inputs), ``push_vs_act-LAYER.png``, and ``anomalies.csv`` (units that training pushes up
for a class while they are low on it).
"""

from __future__ import annotations

import os
import sys

from dissectjax.cli.common import (
    comma_list,
    finite_float,
    log_lines,
    non_negative_int,
    positive_int,
    progress_bars,
    seed,
    write_table,
)
from dissectjax.errors import DissectError


def cmd_specialize(args) -> int:
    from dissectjax.analysis.specialize import anomalies, train_with_stats
    from dissectjax.checkpoint import load_checkpoint, save_checkpoint
    from dissectjax.data.digits import digit_set
    from dissectjax.models import build_model
    from dissectjax.train import ClassUnitStats, TrainConfig

    say, progress = log_lines(args.quiet), progress_bars(not args.quiet)
    layers = comma_list(args.layers, "--layers")
    if not layers:
        raise DissectError("--layers names no layer (e.g. --layers conv2,fc1,fc2)")
    if args.crossed is not None and not 0 <= args.crossed <= 0.8:
        raise DissectError(f"--crossed must be in [0, 0.8] (hooked 7s take 0.2), got {args.crossed}")
    if args.checkpoint or args.stats:
        if not (args.checkpoint and args.stats):
            raise DissectError("--checkpoint and --stats go together (a trained model and its saved statistics)")
        stats = ClassUnitStats.load(args.stats)  # checked first: it is cheap to read
        missing = [name for name in layers if name not in stats.grad]
        if missing:
            raise DissectError(f"--stats {args.stats} has no statistics for {missing}; it has {sorted(stats.grad)}")
        model, variables, _ = load_checkpoint(args.checkpoint)
        params = variables["params"]
        images, labels, _ = digit_set(args.data, args.images, args.seed, args.data_dir, args.crossed, "test")
    else:
        if os.path.exists(os.path.join(args.out, "checkpoint")):
            raise DissectError(f"{args.out}/checkpoint exists; choose another --out or remove it")
        images, labels, _ = digit_set(args.data, args.train_size, args.seed, args.data_dir, args.crossed)
        model = build_model("lenet5")
        config = TrainConfig(seed=args.seed, epochs=args.epochs, batch_size=args.batch_size)
        say(f"training LeNet-5 on {len(images)} {args.data} digits, statistics on {', '.join(layers)}")
        try:
            params, stats, info = train_with_stats(model, images, labels, layers, config, log=say, progress=progress)
        except ValueError as e:
            raise DissectError(str(e)) from None
        say(f"train step {info['step_ms_with_stats']:.2f} ms with statistics, {info['step_ms_without']:.2f} ms without")
        os.makedirs(args.out, exist_ok=True)
        save_checkpoint(os.path.join(args.out, "checkpoint"), "lenet5", {"num_classes": 10}, images.shape[1:],
                        {"params": params}, dataset=f"{args.data}-digits", **info)  # fmt: skip
    os.makedirs(args.out, exist_ok=True)
    stats.save(os.path.join(args.out, "stats.npz"))
    found = []
    for layer in layers:
        m = stats.means(layer)
        rows = [
            {
                "unit": u,
                "class": k,
                "count": int(stats.count[k]),
                "grad": float(m["grad"][k, u]),
                "push": float(m["push"][k, u]),
                "act": float(m["act"][k, u]),
                "relu": float(m["relu"][k, u]),
            }
            for u in range(m["grad"].shape[1])
            for k in range(m["grad"].shape[0])
        ]
        write_table(os.path.join(args.out, f"units-{layer}.csv"), rows)
        ranked = anomalies(stats, layer)
        if args.target_class is not None:
            ranked = [r for r in ranked if r["class"] == args.target_class]
        found += ranked
        write_views(args.out, model, params, images, labels, layer, ranked[: args.top], m, args.target_class)
    found.sort(key=lambda r: -r["score"])
    if found:
        write_table(os.path.join(args.out, "anomalies.csv"), found)
    print(f"{'layer':>6} {'unit':>5} {'class':>5} {'push':>10} {'act':>8} {'score':>6}")
    for r in found[: args.top]:
        print(f"{r['layer']:>6} {r['unit']:>5} {r['class']:>5} {r['push']:10.2e} {r['act']:8.3f} {r['score']:6.2f}")
    return 0


def write_views(out, model, params, images, labels, layer, ranked, means, target_class) -> None:
    """weighted-LAYER.png (top anomalous units x classes) and push_vs_act-LAYER.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dissectjax.analysis.specialize import weighted_mean_inputs

    if ranked:
        weighted = weighted_mean_inputs(model, params, images, labels, layer)
        units = [r["unit"] for r in ranked]
        write_top_inputs(os.path.join(out, f"top-{layer}.png"), model, params, images, layer, units)
        fig, axes = plt.subplots(len(units), 10, figsize=(10, 1.1 * len(units)), squeeze=False)
        for i, u in enumerate(units):
            for k in range(10):
                ax = axes[i, k]
                ax.imshow(weighted[k, u], cmap="gray", vmin=0, vmax=max(weighted[:, u].max(), 1e-6))
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(str(k), fontsize=8)
                if k == 0:
                    ax.set_ylabel(f"{layer}:{u}", fontsize=7)
        fig.suptitle(f"{layer}: rectified-activation-weighted mean input per class", fontsize=9)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"weighted-{layer}.png"), dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    ax.scatter(means["act"].ravel(), means["push"].ravel(), s=4, c="0.6", label="all (class, unit)")
    if target_class is not None:
        ax.scatter(means["act"][target_class], means["push"][target_class], s=8, c="C3", label=f"class {target_class}")
    ax.axhline(0, lw=0.5, c="k")
    ax.set(xlabel="mean activation for the class", ylabel="push (-mean gradient)", title=layer)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"push_vs_act-{layer}.png"), dpi=100)
    plt.close(fig)
    print(f"wrote {out}/weighted-{layer}.png and push_vs_act-{layer}.png", file=sys.stderr)


def write_top_inputs(path, model, params, images, layer, units, k: int = 10) -> None:
    """One row per unit: its ``k`` top-activating inputs, highest first."""
    import matplotlib.pyplot as plt

    from dissectjax.analysis.specialize import top_inputs, unit_activations

    top = top_inputs(unit_activations(model, params, images, layer)[0], k)
    fig, axes = plt.subplots(len(units), k, figsize=(k, 1.1 * len(units)), squeeze=False)
    for i, u in enumerate(units):
        for j, row in enumerate(top[u]):
            axes[i, j].imshow(images[row, :, :, 0], cmap="gray")
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
        axes[i, 0].set_ylabel(f"{layer}:{u}", fontsize=7)
    fig.suptitle(f"{layer}: top-activating inputs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_parsers(sub) -> None:
    s = sub.add_parser("specialize", help="per-class unit statistics gathered in training (LeNet-5 on digits)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--data", default="styled", help="styled (generated), sklearn (bundled) or mnist (TFDS data_dir)")
    s.add_argument("--data-dir", help="TFDS data_dir holding a prepared MNIST (for --data mnist)")
    s.add_argument("--crossed", type=finite_float, help="styled: share of 7s drawn crossed (default 0.3)")
    s.add_argument("--layers", default="conv2,fc1,fc2", help="layers to gather statistics on (default: %(default)s)")
    s.add_argument(
        "--train-size", type=positive_int, default=12000, help="styled digits to train on (default: %(default)s)"
    )
    s.add_argument("--epochs", type=positive_int, default=6)
    s.add_argument("--batch-size", type=positive_int, default=64)
    s.add_argument("--seed", type=seed, default=0)
    s.add_argument("--checkpoint", help="a trained LeNet-5 checkpoint (with --stats) instead of training")
    s.add_argument("--stats", help="stats.npz written by an earlier run")
    s.add_argument(
        "--images", type=positive_int, default=3000, help="digits for the views when loading (default: %(default)s)"
    )
    s.add_argument("--class", dest="target_class", type=non_negative_int, help="only anomalies of this class (e.g. 7)")
    s.add_argument("--top", type=positive_int, default=8, help="anomalous units shown per layer (default: %(default)s)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_specialize)
