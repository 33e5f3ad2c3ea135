"""Network Dissection of a source's layers on a probe set (docs/ARCHITECTURE.md, Semantics and Outputs).

    config.py      DissectConfig: quantile, IoU threshold, batching
    cache.py       Pipeline, ActivationCache: activations kept between passes, decoding processes
    protocols.py   Source, ProbeDataset, Progress: what a dissection reads and reports through
    sources.py     ModelSource (a model's layers), ArraySource (stored activations), labelled_pixels
    kernels.py     the compiled per-batch kernels of a device mesh
    accumulate.py  Accumulator: exact host totals of per-batch statistics
    top_images.py  TopImages: each unit's rows of highest activation
    resume.py      ResumeFile: the saved state of an interrupted run
    driver.py      Passes (thresholds, then counts) and dissect()
    result.py      LayerResult: counts, IoU and labels of one layer
    run.py         run_dissection(): dissect, resume, write the results directory and report

Every public name is importable from here: ``from dissectjax.dissect import dissect``.
"""

from dissectjax.dissect.accumulate import Accumulator
from dissectjax.dissect.cache import Pipeline
from dissectjax.dissect.config import DissectConfig
from dissectjax.dissect.driver import Passes, dissect
from dissectjax.dissect.kernels import Kernels, kernels
from dissectjax.dissect.protocols import ProbeDataset, Progress, Say, Source, no_progress, silent
from dissectjax.dissect.result import LayerResult
from dissectjax.dissect.resume import ResumeFile
from dissectjax.dissect.run import input_stamps, run_dissection, write_report_files
from dissectjax.dissect.sources import ArraySource, ModelSource
from dissectjax.dissect.top_images import TopImages

__all__ = [
    "Accumulator",
    "ArraySource",
    "DissectConfig",
    "Kernels",
    "LayerResult",
    "ModelSource",
    "Passes",
    "Pipeline",
    "ProbeDataset",
    "Progress",
    "ResumeFile",
    "Say",
    "Source",
    "TopImages",
    "dissect",
    "input_stamps",
    "kernels",
    "no_progress",
    "run_dissection",
    "silent",
    "write_report_files",
]
