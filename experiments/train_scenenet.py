"""Reproduces checkpoints/scenenet: SceneNet trained on synthetic scenes (a few CPU minutes).

    python experiments/train_scenenet.py [--out checkpoints/scenenet] [--seed 0]

Prints the validation accuracy per epoch; the saved config.json records it with the
training settings. The same library call as `dissectjax train`
(:func:`dissectjax.train.scenes.train_checkpoint` with the recipe ``SCENE_TRAINING``).
"""

import argparse
import dataclasses

from dissectjax.train.scenes import SCENE_TRAINING, train_checkpoint


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="checkpoints/scenenet")
    p.add_argument("--seed", type=int, default=SCENE_TRAINING.seed)
    a = p.parse_args()
    metrics = train_checkpoint(a.out, "scenenet", config=dataclasses.replace(SCENE_TRAINING, seed=a.seed))
    print(f"saved {a.out}: validation accuracy {metrics['val_accuracy']:.3f} ({metrics['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
