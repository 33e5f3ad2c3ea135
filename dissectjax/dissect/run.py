"""The dissection workflow behind ``dissectjax dissect``: dissect, then write the results
directory atomically, resuming an interrupted run and adding the report.

    run_dissection(source, probe, config, "out/", {"model": ..., "dataset": ...})

Only the main process writes; every process runs the passes.
"""

from __future__ import annotations

import dataclasses
import os

from dissectjax.dissect.cache import Pipeline
from dissectjax.dissect.config import DissectConfig
from dissectjax.dissect.driver import dissect, per_device_batch
from dissectjax.dissect.protocols import ProbeDataset, Progress, Say, Source, no_progress, silent
from dissectjax.dissect.result import LayerResult
from dissectjax.dissect.resume import ResumeFile, ResumeSaveError
from dissectjax.errors import DissectError
from dissectjax.output_dir import atomic_directory, check_output_path, writing_errors
from dissectjax.parallel import DataParallel
from dissectjax.report import write_report
from dissectjax.results import write_results, write_top_images

INPUT_KEYS = ("dataset", "checkpoint", "activations")  # the entries of ``info`` that name input files
LABELLING_FIELDS = ("iou_threshold", "detector_rule")  # DissectConfig fields that do not change the counts


def input_paths(info: dict) -> list[str]:
    """The files and directories named in ``info`` that the run reads."""
    return [info[key] for key in INPUT_KEYS if info.get(key) and os.path.exists(info[key])]


def input_stamps(info: dict) -> dict[str, list[int]]:
    """[size, mtime_ns] of every input file named in ``info``: every file below a dataset's
    or a checkpoint's directory (tables, images, label maps, arrays) and an activations
    file. A resumed run must read the same data; a changed file starts it afresh."""
    paths = []
    for where in input_paths(info):
        if os.path.isdir(where):
            for folder, _, files in os.walk(where):
                paths += [os.path.join(folder, f) for f in files]
        else:
            paths.append(where)
    stamps = {}
    for path in sorted(paths):
        st = os.stat(path)
        stamps[path] = [st.st_size, st.st_mtime_ns]
    return stamps


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
        # the labelling rules (IoU threshold, comparison) act after the counts: a rerun with others resumes
        "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in LABELLING_FIELDS},
        "images": len(probe),
        "inputs": input_stamps(info),
        "global_batch": parallel.global_batch_size(per_device_batch(config, len(probe))),
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
    pipeline: Pipeline = Pipeline(),
) -> dict[str, LayerResult]:
    """Dissects and writes ``out`` atomically (on the main process); returns {layer: LayerResult}.

    ``info`` is provenance for ``summary.json`` (``model``, ``dataset``, ...; paths under
    ``dataset``, ``checkpoint`` and ``activations`` are fingerprinted for resuming).
    With ``resume``, the state is saved every ``save_every`` seconds and a killed run with
    the same inputs continues where it stopped. With ``report``, also the top images and
    ``report.html``. ``pipeline``: how the passes run (:class:`~dissectjax.dissect.cache.Pipeline`;
    results are identical whichever way).
    """
    parallel = DataParallel.create()
    inputs = input_paths(info)
    check_output_path(out, inputs)
    resume_file = None
    if resume:
        path = resume_path(out)
        resume_file = ResumeFile(path, run_fingerprint(source, probe, config, info, parallel), save_every)
        if parallel.is_main and resume_file.load() is not None:
            say(f"resuming from {path}")
    if not parallel.is_main:
        return dissect(source, probe, config, progress, parallel, resume_file, pipeline)
    with atomic_directory(out, inputs) as tmp:  # made first: an unwritable --out fails before any computation
        try:
            results = dissect(source, probe, config, progress, parallel, resume_file, pipeline)
        except KeyboardInterrupt:
            if resume_file is not None and os.path.exists(resume_file.path):
                say(f"interrupted: the state saved at the last checkpoint is in {resume_file.path}; "
                    "run the same command again to resume from it")  # fmt: skip
            raise
        except ResumeSaveError:
            raise  # the state saved before stays for the rerun (the message says so)
        except DissectError:
            if resume_file is not None:  # bad input: the fixed input will not match the saved state
                resume_file.remove()
            raise
        try:
            with writing_errors(out):
                write_results(tmp, results, info)
                if report:
                    write_report_files(tmp, results, probe)
        except DissectError as e:
            if resume_file is not None and os.path.exists(resume_file.path):
                raise DissectError(f"{e}; the finished counts are kept in {resume_file.path}: make room and run "
                                   "the same command again to write them") from None  # fmt: skip
            raise
    if resume_file is not None:
        resume_file.remove()
    say(f"wrote {out}")
    return results


def write_report_files(directory: str, results: dict[str, LayerResult], probe: ProbeDataset) -> None:
    """The top images and the HTML report, complete before the directory is committed."""
    write_top_images(os.path.join(directory, "top_images.npz"), results, probe)
    write_report(directory)
