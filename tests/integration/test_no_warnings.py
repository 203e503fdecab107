"""A decode prints no warning: the CLI on the bundled models, in a fresh process.

Runs as a subprocess (not `conftest.run_cli`, which runs in-process) so that the
environment's `PYTHONWARNINGS=error::FutureWarning` applies from interpreter start and
transformers' `warning_once` logging, which fires once per process, is seen every time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

D3LLM = Path(sys.executable).parent / "d3llm"

CASES = {
    "generate-d3llm-cache": ["generate", "--model", "tiny-teacher", "--method", "d3llm-cache",
                             "Mia has 12 apples. How many apples does Mia have now?"],
    "generate-ar": ["generate", "--model", "tiny-ar", "--method", "ar",
                    "Mia has 12 apples. How many apples does Mia have now?"],
    "eval-d3llm-cache": ["eval", "--model", "tiny-teacher", "--task", "arith",
                         "--method", "d3llm-cache", "--n", "2"],
}


@pytest.mark.parametrize("args", CASES.values(), ids=CASES.keys())
def test_cli_prints_no_warning(args, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "error::FutureWarning", "OMP_NUM_THREADS": "1"}
    command = [str(D3LLM)] if D3LLM.exists() else [sys.executable, "-m", "d3llm.cli"]
    done = subprocess.run([*command, *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert "deprecated" not in done.stderr, done.stderr
