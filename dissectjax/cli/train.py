"""``dissectjax train``: a scene classifier on the synthetic scenes, optionally localizing concepts.

dissectjax train --out ckpt/baseline
dissectjax train --out ckpt/concept --concepts triangle,star,crown,wheel --concept-weight 0.5
dissectjax train --out ckpt/whiten --concepts triangle,star,crown,wheel --whiten --align 1
"""

from __future__ import annotations

import argparse
import dataclasses

from dissectjax.cli.common import comma_list, finite_float, log_lines, positive_int, seed
from dissectjax.errors import DissectError
from dissectjax.train.scenes import SCENE_TRAINING, SceneData


def add_recipe_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("localizing: target concept k goes to unit k of --localize-layer")
    g.add_argument(
        "--localize-layer", default="conv5", help="layer whose units get the concepts (default: %(default)s)"
    )
    g.add_argument("--concepts", help="target concepts, comma-separated, e.g. triangle,star,crown,wheel")
    g.add_argument("--concept-weight", type=finite_float, default=0.0,
                   help="strength of the per-pixel concept supervision of units 0..K-1 (e.g. 0.5)")  # fmt: skip
    g.add_argument("--l1", type=finite_float, default=0.0, help="strength of L1 on the layer's activations (e.g. 0.05)")
    g.add_argument(
        "--selectivity", type=finite_float, default=0.0, help="strength of the class-selectivity regularizer"
    )
    g.add_argument("--whiten", action="store_true", help="replace the layer's BatchNorm by concept whitening")
    g.add_argument(
        "--align", type=finite_float, default=0.0, help="concept whitening: strength of aligning axes 0..K-1"
    )


def recipe_from_args(args):
    """The :class:`~dissectjax.analysis.localize.recipe.Recipe` the flags ask for, or None for plain training."""
    from dissectjax.analysis.localize.recipe import Recipe

    concepts = tuple(comma_list(args.concepts, "--concepts"))
    recipe = Recipe(layer=args.localize_layer, concepts=concepts, concept=args.concept_weight, l1=args.l1,
                    selectivity=args.selectivity, whiten=args.whiten, align=args.align)  # fmt: skip
    if recipe.is_baseline:
        if concepts:
            raise DissectError("--concepts given but no localizing term: add --concept-weight, --whiten --align, ...")
        return None
    recipe.numbers()  # unknown concept names fail here, before any training
    return recipe


def cmd_train(args) -> int:
    from dissectjax.train.scenes import train_checkpoint

    say = log_lines(args.quiet)
    config = dataclasses.replace(SCENE_TRAINING, seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                                 learning_rate=args.learning_rate)  # fmt: skip
    shortcut = None
    if args.shortcut:
        from dissectjax.data.labelled import shortcut_spec

        shortcut = shortcut_spec(args.shortcut, "--shortcut")
        say(f"planted shortcut: a {shortcut.color} square on {shortcut.with_class:.0%} of {shortcut.scene} scenes and "
            f"{shortcut.otherwise:.0%} of the others")  # fmt: skip
    absent = tuple(comma_list(args.absent, "--absent")) if args.absent else ()
    if absent:
        say(f"absent from the training scenes: {', '.join(absent)}")
    data = SceneData(train_size=args.train_size, val_size=args.val_size, shortcut=shortcut, absent=absent)
    recipe = recipe_from_args(args)
    kwargs, terms, concepts, info = {}, (), (), {}
    if recipe is not None:
        if args.model != "scenenet":
            raise DissectError(f"localizing flags train SceneNet, not --model {args.model}")
        model = recipe.model()  # checks the layer and the number of concepts
        kwargs = {"whiten": list(model.whiten)} if model.whiten else {}
        terms, concepts, info = recipe.terms(), recipe.numbers(), {"localize": recipe.to_json()}
        say(f"localizing in {recipe.layer}: " + ", ".join(f"{k}={v}" for k, v in info["localize"].items()))
    metrics = train_checkpoint(args.out, args.model, kwargs, config, data, terms, concepts, info, log=say)
    print(
        f"saved {args.out}: validation accuracy {metrics['val_accuracy']:.3f} after {config.epochs} epochs "
        f"({metrics['seconds']:.0f} s)"
    )
    return 0


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="train a scene classifier on synthetic scenes and save a checkpoint")
    t.add_argument("--out", required=True, help="checkpoint directory to create")
    t.add_argument("--model", default="scenenet")
    t.add_argument("--seed", type=seed, default=SCENE_TRAINING.seed)
    t.add_argument("--epochs", type=positive_int, default=SCENE_TRAINING.epochs)
    t.add_argument("--train-size", type=positive_int, default=SceneData.train_size)
    t.add_argument("--val-size", type=positive_int, default=SceneData.val_size,
                   help="validation scenes measured after every epoch (default: %(default)s)")  # fmt: skip
    t.add_argument("--batch-size", type=positive_int, default=SCENE_TRAINING.batch_size)
    t.add_argument("--learning-rate", type=finite_float, default=SCENE_TRAINING.learning_rate)
    t.add_argument("--shortcut", metavar="SCENE:COLOR",
                   help="plant a bug: a COLOR square on 90%% of SCENE's training scenes and 2%% of the others "
                        "(measure it on --data shifted:SCENE:COLOR)")  # fmt: skip
    t.add_argument("--absent", metavar="OBJECT[,OBJECT]",
                   help="objects the training scenes never show (e.g. tree): an instance lacking a concept, "
                        "to receive it by transplant")  # fmt: skip
    t.add_argument("--quiet", action="store_true")
    add_recipe_flags(t)
    t.set_defaults(func=cmd_train)
