"""The README's Python example runs as written, from a copy of the repository's layout."""

import os
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_python_example_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    monkeypatch.chdir(tmp_path)
    exec(compile(python_example(), "README.md", "exec"), {})
    detectors, unique = map(int, capsys.readouterr().out.splitlines()[0].split())
    assert 0 < detectors <= 128 and 0 < unique <= detectors
    assert (tmp_path / "out-conv5" / "conv5" / "units.csv").is_file()
    assert (tmp_path / "out-conv5" / "report.html").is_file()
    assert not os.path.exists(tmp_path / ".out-conv5.resume.npz")
