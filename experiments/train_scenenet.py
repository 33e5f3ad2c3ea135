"""Reproduces the committed scene classifiers: SceneNet trained on synthetic scenes.

    python experiments/train_scenenet.py [--recipe demo|strong] [--out DIR] [--seed 0]

``demo`` (checkpoints/scenenet, scenenet-seed1): 12,000 scenes, 6 epochs, about 12 CPU
minutes, validation accuracy 0.56-0.59. ``strong`` (checkpoints/scenenet-strong,
scenenet-strong-seed1): the same network on 24,000 scenes for 10 epochs, about 45 CPU
minutes on 2 cores. Prints the validation accuracy per epoch; the saved config.json records
it with the training settings. The same library call as `dissectjax train`
(:func:`dissectjax.train.scenes.train_checkpoint`, recipes in ``dissectjax.train.scenes.RECIPES``).
"""

import argparse
import dataclasses

from dissectjax.data.labelled import shortcut_spec
from dissectjax.train.scenes import RECIPES, train_checkpoint

DEFAULT_OUT = {"demo": "checkpoints/scenenet", "strong": "checkpoints/scenenet-strong"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), default="demo")
    p.add_argument("--out", default=None, help="checkpoint directory (default: checkpoints/scenenet[-strong])")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shortcut", metavar="SCENE:COLOR", help="plant a shortcut cue in the training scenes")
    p.add_argument("--absent", metavar="OBJECT[,OBJECT]", help="objects the training scenes never show")
    a = p.parse_args()
    config, data = RECIPES[a.recipe]
    if a.shortcut:
        data = dataclasses.replace(data, shortcut=shortcut_spec(a.shortcut, "--shortcut"))
    if a.absent:
        data = dataclasses.replace(data, absent=tuple(a.absent.split(",")))
    if a.out is None and (a.shortcut or a.absent):
        p.error("--shortcut and --absent train a variant: give its --out")
    out = a.out or DEFAULT_OUT[a.recipe]
    metrics = train_checkpoint(out, "scenenet", config=dataclasses.replace(config, seed=a.seed), data=data,
                               info={"recipe": a.recipe})  # fmt: skip
    print(f"saved {out}: validation accuracy {metrics['val_accuracy']:.3f} ({metrics['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
