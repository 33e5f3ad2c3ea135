"""The shared conformance fixture and checker (../shared/conformance), through the CLI."""

import os
import subprocess
import sys

import pytest
from conftest import CONFORMANCE

from dissectjax.cli import main

FIXTURE = os.path.join(CONFORMANCE, "fixture")
ACTIVATIONS = os.path.join(FIXTURE, "activations.npy")

pytestmark = pytest.mark.skipif(not os.path.isdir(FIXTURE), reason="../shared/conformance is not beside the checkout")


@pytest.mark.parametrize("quantile", ["0.005", "0.05"])
@pytest.mark.parametrize("no_condition", [False, True])
def test_conformance_checker_passes(tmp_path, quantile, no_condition):
    out = str(tmp_path / "out")
    flags = ["--no-condition"] if no_condition else []
    argv = ["dissect", "--activations", ACTIVATIONS, "--dataset", FIXTURE, "--out", out, "--quantile", quantile]
    assert main([*argv, *flags, "--quiet"]) == 0
    check = subprocess.run(
        [sys.executable, os.path.join(CONFORMANCE, "check.py"), FIXTURE, ACTIVATIONS,
         os.path.join(out, "activations"), "--quantile", quantile, *flags],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    verdict = check.stdout.strip().splitlines()[-1]
    assert check.returncode == 0 and verdict.startswith("OK"), check.stdout + check.stderr
