"""The dissection workflow behind ``dissectjax dissect``: dissect, then write the results
directory atomically, resuming an interrupted run and adding the report.

    run_dissection(source, probe, config, "out/", {"model": ..., "dataset": ...})

Only the main process writes; every process runs the passes.
"""

from __future__ import annotations

import dataclasses
import os

from dissectjax.dissect.config import DissectConfig
from dissectjax.dissect.driver import dissect
from dissectjax.dissect.protocols import ProbeDataset, Progress, Say, Source, no_progress, silent
from dissectjax.dissect.result import LayerResult
from dissectjax.dissect.resume import ResumeFile
from dissectjax.parallel import DataParallel
from dissectjax.report import write_report
from dissectjax.results import atomic_directory, check_output_path, write_results, write_top_images

INPUT_KEYS = ("dataset", "checkpoint", "activations")  # the entries of ``info`` that name input files


def input_stamps(info: dict) -> dict[str, list[int]]:
    """[size, mtime_ns] of every input file named in ``info`` (a dataset's ``.csv`` tables,
    every file of a checkpoint, an activations file): a resumed run must read the same data."""
    paths = []
    for key in INPUT_KEYS:
        where = info.get(key)
        if where and os.path.isdir(where):  # a dataset's tables, or every file of a checkpoint
            for folder, _, files in os.walk(where):
                paths += [os.path.join(folder, f) for f in files if key == "checkpoint" or f.endswith(".csv")]
        elif where and os.path.isfile(where):
            paths.append(where)
    return {p: [os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in sorted(paths)}


def resume_path(out: str) -> str:
    """Where the state of an interrupted run writing ``out`` is kept: ``.<out>.resume.npz`` beside it."""
    out_abs = os.path.abspath(out)
    return os.path.join(os.path.dirname(out_abs), f".{os.path.basename(out_abs)}.resume.npz")


def run_fingerprint(
    source: Source, probe: ProbeDataset, config: DissectConfig, info: dict, parallel: DataParallel
) -> dict:
    """Everything a saved state depends on: a resumed run must match it exactly."""
    return {
        **info,
        "layers": list(source.layers),
        "config": dataclasses.asdict(config),
        "images": len(probe),
        "inputs": input_stamps(info),
        "global_batch": parallel.global_batch_size(config.batch_size),
    }


def run_dissection(
    source: Source,
    probe: ProbeDataset,
    config: DissectConfig,
    out: str,
    info: dict,
    progress: Progress = no_progress,
    say: Say = silent,
    resume: bool = True,
    save_every: float = 60.0,
    report: bool = True,
) -> dict[str, LayerResult]:
    """Dissects and writes ``out`` atomically (on the main process); returns {layer: LayerResult}.

    ``info`` is provenance for ``summary.json`` (``model``, ``dataset``, ...; paths under
    ``dataset``, ``checkpoint`` and ``activations`` are fingerprinted for resuming).
    With ``resume``, the state is saved every ``save_every`` seconds and a killed run with
    the same inputs continues where it stopped. With ``report``, also the top images and
    ``report.html``.
    """
    parallel = DataParallel.create()
    check_output_path(out)
    resume_file = None
    if resume:
        path = resume_path(out)
        resume_file = ResumeFile(path, run_fingerprint(source, probe, config, info, parallel), save_every)
        if parallel.is_main and resume_file.load() is not None:
            say(f"resuming from {path}")
    if not parallel.is_main:
        return dissect(source, probe, config, progress, parallel, resume_file)
    with atomic_directory(out) as tmp:
        results = dissect(source, probe, config, progress, parallel, resume_file)
        write_results(tmp, results, info)
        if report:
            write_report_files(tmp, results, probe, say)
    if resume_file is not None:
        resume_file.remove()
    say(f"wrote {out}")
    return results


def write_report_files(directory: str, results: dict[str, LayerResult], probe: ProbeDataset, say: Say = silent) -> None:
    """The top images and the HTML report; a failure here is reported, never fatal (the counts are written)."""
    try:
        write_top_images(os.path.join(directory, "top_images.npz"), results, probe)
        write_report(directory)
    except Exception as e:  # the dissection itself succeeded: keep it
        say(f"warning: the report could not be written ({type(e).__name__}: {e}); "
            "the results are complete; run `dissectjax report DIR` to retry")  # fmt: skip
