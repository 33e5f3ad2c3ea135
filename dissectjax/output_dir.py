"""Output directories that dissectjax owns: written whole, committed by one rename, never
replacing anything it did not write.

    check_output_path(out, inputs)  -> refuse before any computation: not writable, holds an
                                       input of the run, or holds files dissectjax did not write
    atomic_directory(out, inputs)   -> a private ``.OUT.partial-PID-*`` folder; on success a
                                       manifest of every file is added and the folder renamed
                                       to ``out`` (an earlier dissectjax output there is replaced)

A directory is dissectjax's when its manifest (``.dissectjax-manifest.json``) lists exactly
the files in it. Partial folders of runs whose process is gone are removed by the next run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence

from dissectjax.errors import DissectError
from dissectjax.version import __version__

MANIFEST = ".dissectjax-manifest.json"


def listed_files(directory: str) -> list[str]:
    """Every file below ``directory``, as sorted paths relative to it (the manifest itself left out)."""
    found = []
    for folder, _, files in os.walk(directory):
        found += [os.path.relpath(os.path.join(folder, f), directory) for f in files]
    return sorted(f for f in found if f != MANIFEST)


def write_manifest(directory: str) -> None:
    """Records every file now in ``directory`` as dissectjax's."""
    manifest = {"written_by": f"dissectjax {__version__}", "files": listed_files(directory)}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def add_to_manifest(path: str) -> None:
    """Adds a file just written into an owned output directory to its manifest (no-op elsewhere)."""
    directory = os.path.dirname(os.path.abspath(path))
    manifest = os.path.join(directory, MANIFEST)
    if os.path.isfile(manifest) and not foreign_files(directory, ignore=os.path.basename(path)):
        write_manifest(directory)


def foreign_files(directory: str, ignore: str | None = None) -> list[str]:
    """Files in ``directory`` that its manifest does not list (all of them without a manifest)."""
    present = [f for f in listed_files(directory) if f != ignore]
    try:
        with open(os.path.join(directory, MANIFEST)) as f:
            listed = set(json.load(f)["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return present
    return [f for f in present if f not in listed]


def _inside(path: str, directory: str) -> bool:
    path, directory = os.path.realpath(path), os.path.realpath(directory)
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)


def check_output_path(out: str, inputs: Sequence[str] = ()) -> str:
    """The absolute path of ``out`` if a result may replace what is there, else a DissectError.

    ``out`` may be absent, an empty directory, or a directory dissectjax wrote whole (its
    manifest lists every file in it). ``inputs`` (files or directories the run reads) must
    not lie inside it. The parent must be a writable directory (or creatable).
    """
    out = os.path.abspath(out)
    for path in inputs:
        if path and os.path.exists(path) and _inside(path, out):
            raise DissectError(f"output directory {out} holds an input of this run ({path}); choose another path")
    if os.path.lexists(out):
        if not os.path.isdir(out) or os.path.islink(out):
            raise DissectError(f"output path {out} exists and is not a directory; choose another path")
        foreign = foreign_files(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise DissectError(
                f"output directory {out} holds files dissectjax did not write ({shown}); it replaces only its own "
                "outputs: choose another path, or move those files away"
            )
    parent = os.path.dirname(out)
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise DissectError(f"cannot create output directory {out}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DissectError(f"cannot write output directory {out}: {existing} is not writable")
    return out


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(out: str) -> list[str]:
    """Removes ``.OUT.partial-PID-*`` and ``.OUT.old-PID-*`` folders beside ``out`` whose process is gone."""
    parent, base = os.path.dirname(out), os.path.basename(out)
    removed = []
    if not os.path.isdir(parent):
        return removed
    for name in os.listdir(parent):
        for kind in ("partial", "old"):
            prefix = f".{base}.{kind}-"
            if name.startswith(prefix):
                pid = name[len(prefix) :].split("-", 1)[0]
                if pid.isdigit() and not _process_alive(int(pid)):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                    removed.append(name)
    return removed


def _writing_error(out: str, e: OSError) -> DissectError:
    reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
    where = f" ({e.filename})" if e.filename else ""
    return DissectError(f"could not write {out}: {reason}{where}; nothing was committed")


@contextlib.contextmanager
def atomic_directory(out: str, inputs: Sequence[str] = ()) -> Iterator[str]:
    """Yields a fresh private directory that becomes ``out`` when the block succeeds.

    Checked first (:func:`check_output_path`); the manifest is written last, after every
    file is complete, then the directory is renamed into place. On any failure nothing is
    committed and the partial folder is removed. Wrap the block's own writes in
    :func:`writing_errors`.
    """
    out = check_output_path(out, inputs)
    parent = os.path.dirname(out)
    created = _missing_parents(parent)
    try:
        os.makedirs(parent, exist_ok=True)
        remove_stale_partials(out)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-{os.getpid()}-", dir=parent)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; results are for sharing
    except OSError as e:
        raise _writing_error(out, e) from None
    try:
        yield tmp
        with writing_errors(out):
            write_manifest(tmp)
            check_output_path(out, inputs)  # nothing foreign appeared there meanwhile
            if os.path.exists(out):
                old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-{os.getpid()}-", dir=parent)
                os.rename(out, os.path.join(old, "previous"))
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:  # the folders made for --out, deepest first, where still empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise


def _missing_parents(folder: str) -> list[str]:
    """The folders of ``folder``'s path that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


@contextlib.contextmanager
def writing_errors(out: str) -> Iterator[None]:
    """Turns an OSError raised while writing ``out`` (disk full, read-only, vanished) into a
    DissectError that says so; use it around writes only, so that reading errors keep theirs."""
    try:
        yield
    except OSError as e:
        raise _writing_error(out, e) from None
