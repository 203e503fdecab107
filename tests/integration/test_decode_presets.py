"""benchmarks/decode_presets.py runs its rows in turn, `--repeats` times, and reports each row's
median tokens/s with the min-max over the passes (docs/benchmarks.md)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "decode_presets.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("decode_presets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_each_pass_runs_every_row_starting_one_row_later(bench, monkeypatch):
    order = []

    def fake_evaluate(lm, task, config, n, seed, batch_size):
        order.append((config, batch_size))
        return SimpleNamespace(tokens_per_second=float(len(order)))

    monkeypatch.setattr(bench, "evaluate", fake_evaluate)
    rows = [(None, None, label, label) for label in "ABC"]
    runs = bench.measure(rows, n=1, batch_sizes=[1, 8], repeats=3)
    assert [c for c, b in order if b == 1] == list("ABC" "BCA" "CAB")
    assert [len(by_batch[1]) for by_batch in runs] == [3, 3, 3]
    assert runs[0][1][0].tokens_per_second == 1.0 and runs[0][8][0].tokens_per_second == 2.0


def test_cells_show_the_median_and_the_spread(bench):
    def result(rate):
        return SimpleNamespace(tokens_per_second=rate, forward_seconds=0.9, seconds=1.0, tokens_per_forward=2.0,
                               accuracy_text=lambda: "50.0 [23.7, 76.3]")

    passes = [result(100.0), result(130.0), result(90.0)]
    cells, typical = bench._cells({1: passes, 8: [result(300.0)]})
    assert cells == ["50.0 [23.7, 76.3]", "2.00", "100.0 (90.0-130.0)", "300.0", "10%"]
    assert typical is passes[0]  # the median pass feeds the profile


def test_repeats_runs_and_a_bad_value_is_refused_naming_it():
    done = run("--model", "tiny-ar", "--task", "arith", "--method", "ar", "--n", "1", "--batch-sizes", "1",
               "--no-ceiling", "--threads", "1", "--repeats", "2")
    assert done.returncode == 0, done.stderr
    assert "median (min-max) of 2 passes" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("| tiny-ar | arith | ar |"))
    assert "(" in row.split("|")[6] and "-" in row.split("|")[6]  # tokens/s: median (min-max)
    refused = run("--model", "tiny-ar", "--repeats", "0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].endswith("--repeats must be >= 1 (passes over the rows), got 0")
