"""Reproduces checkpoints/scenenet: SceneNet trained on synthetic scenes (a few CPU minutes).

    python experiments/train_scenenet.py [--out checkpoints/scenenet] [--seed 0]

Prints the validation accuracy per epoch; the saved config.json records it with the
training settings. Same code as `dissectjax train`.
"""

import sys

from dissectjax.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "checkpoints/scenenet"]
    sys.exit(main(["train", *args]))
