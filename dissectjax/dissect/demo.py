"""The demo: the committed scene classifier and its random-init twin, dissected side by side.

checkpoint -> (trained, random-init) variables -> run_dissection on the synthetic probe set
"""

from __future__ import annotations

import os

from dissectjax.checkpoint import demo_checkpoint, init_variables, load_checkpoint
from dissectjax.data.open import PROBE_SIZE, open_probe
from dissectjax.dissect.config import DissectConfig
from dissectjax.dissect.protocols import Progress, Say, no_progress, silent
from dissectjax.dissect.result import LayerResult
from dissectjax.dissect.run import run_dissection
from dissectjax.dissect.sources import ModelSource

DEMO_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
DEMO_BATCH = 100
RANDOM_INIT_SEED = 0


DemoResults = dict[str, dict[str, LayerResult]]  # {"trained" | "random": {layer: result}}


def run_demo(out: str, checkpoint: str | None = None, images: int = PROBE_SIZE, batch_size: int = DEMO_BATCH,
             progress: Progress = no_progress, say: Say = silent) -> tuple[DemoResults, str]:  # fmt: skip
    """Dissects conv1-conv5 of the trained network into ``out/trained`` and of the same
    architecture at random initialization into ``out/random``; returns ({tag: {layer:
    result}}, the probe set's name)."""
    checkpoint = checkpoint or demo_checkpoint()
    model, trained, meta = load_checkpoint(checkpoint)
    dataset, dataset_name = open_probe(f"synthetic:{images}", progress, say)
    shape = tuple(meta["input_shape"])
    config = DissectConfig(batch_size=batch_size)
    random = init_variables(model, shape, seed=RANDOM_INIT_SEED)
    say(f"model: {meta['model']} from {checkpoint} (validation accuracy {meta.get('val_accuracy', '?')})")
    results = {}
    for tag, variables in (("trained", trained), ("random", random)):
        say(f"dissecting the {tag} network: layers {', '.join(DEMO_LAYERS)}")
        source = ModelSource(model, variables, DEMO_LAYERS, shape)
        info = {"model": f"{meta['model']}:{tag}", "dataset": dataset_name}
        # the random twin is not the checkpoint: recording it would let `serve` ablate the wrong weights
        info |= {"checkpoint": os.path.abspath(checkpoint)} if tag == "trained" else {"init_seed": RANDOM_INIT_SEED}
        results[tag] = run_dissection(source, dataset, config, os.path.join(out, tag), info, progress, say)
    return results, dataset_name
