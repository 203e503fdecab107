"""The code task's scorer and its sandbox."""

import os
from pathlib import Path

import pytest

from d3llm.tasks import get_task
from d3llm.tasks.sandbox import run_python


@pytest.fixture(scope="module")
def code_task():
    return get_task("code")


def test_reference_solutions_pass_and_wrong_ones_fail(code_task):
    problems = code_task.problems("test", 12, seed=0)
    assert all(code_task.score(p, p.target) for p in problems)
    assert all(len(p.tests) >= 3 for p in problems)
    p = problems[0]
    assert code_task.score(p, f"```python\n{p.target}\n```")  # fenced code is extracted
    assert not code_task.score(p, p.target.replace("return", "return None and"))
    assert not code_task.score(p, "def broken(:\n  pass")
    assert not code_task.score(p, "")


def test_sandbox_kills_an_infinite_loop():
    result = run_python("while True:\n    pass", timeout_s=1.0)
    assert result.timed_out and not result.passed


def test_sandbox_refuses_writes_outside_its_directory(tmp_path):
    target = tmp_path / "owned.txt"
    code = f"open({str(target)!r}, 'w').write('x')"
    result = run_python(code, timeout_s=5)
    assert not result.passed and "outside the sandbox" in result.stderr
    assert not target.exists()
    # writing inside its own temporary directory is allowed
    assert run_python("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'").passed


def test_sandbox_refuses_deleting_outside(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    result = run_python(f"import os\nos.remove({str(victim)!r})")
    assert not result.passed and victim.read_text() == "keep"


@pytest.mark.parametrize("code", ["import socket", "import urllib.request", "import subprocess",
                                  "import os\nos.system('true')"])
def test_sandbox_refuses_network_and_processes(code):
    result = run_python(code, timeout_s=5)
    assert not result.passed and "sandbox" in result.stderr


def test_hostile_solution_scores_false_without_harm(code_task, tmp_path):
    p = code_task.problems("test", 1, seed=1)[0]
    marker = Path(tmp_path) / "pwned"
    hostile = f"import socket\nopen({str(marker)!r}, 'w')\n" + p.target
    assert not code_task.score(p, hostile)
    assert not marker.exists()
    assert os.getcwd()  # the test process is untouched
