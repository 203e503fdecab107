"""One spelling of each option across commands.

- `--set` is a decode setting everywhere; distill's training settings are `--train-set`, and
  `distill --set` is refused in one line that names `--train-set`.
- `--dtype` is the compute dtype everywhere; export's stored precision is `--storage-dtype`, and
  `export --dtype` is refused in one line that names `--storage-dtype`.
- The commands whose model is a teacher take `--model`/`-m` beside `--teacher`/`-t`.
- `--batch-size` defaults to the same 16 wherever a batch of prompts is decoded (the lm-eval
  adapter's default and `auto` too).
- The benchmark scripts take `--task a --task b` (and `--method`) as the CLI does, and
  `--tasks a,b` / `--methods a,b` too.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = {
    "format": "d3llm-trajectories", "version": 1, "teacher": "tiny-teacher", "teacher_fingerprint": "0" * 16,
    "tokenizer_fingerprint": "0" * 16, "family": "llada", "work": {"tasks": {"arith": 4}, "split": "train", "seed": 0},
    "num_records": 4, "chunk_size": 4, "decode_config": {"max_new_tokens": 32, "block_size": 32},
}


def one_line_error(code, err: str, *names: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], err


def trajectory_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "traj"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps(MANIFEST))
    return folder


@pytest.fixture
def trained(monkeypatch):
    """Capture the config `distill` would train with, instead of training."""
    import d3llm.train.trainer as trainer

    seen = {}

    def fake_train(config, out, **kwargs):
        seen["config"] = config
        return Path(out)

    monkeypatch.setattr(trainer, "train", fake_train)
    return seen


# --- distill: --train-set, not --set -----------------------------------------------------------


def test_distill_train_set_reaches_the_training_config(monkeypatch, capsys, tmp_path, trained):
    traj = trajectory_folder(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "distill", "--teacher", "tiny-teacher", "--trajectories", traj,
                             "--out", tmp_path / "student", "--train-set", "steps=7",
                             "--train-set", "masking=random")
    assert code in (0, None), err
    assert trained["config"].steps == 7
    assert trained["config"].distill.masking == "random"


@pytest.mark.parametrize("extra", [[], ["--train-set", "steps=7"]], ids=["alone", "beside-train-set"])
def test_distill_set_is_refused_naming_train_set(monkeypatch, capsys, tmp_path, trained, extra):
    traj = trajectory_folder(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "distill", "--teacher", "tiny-teacher", "--trajectories", traj,
                           "--out", tmp_path / "student", *extra, "--set", "steps=5")
    one_line_error(code, err, "--set", "--train-set steps=5")
    assert "config" not in trained and not (tmp_path / "student").exists()


def test_distill_set_is_refused_before_missing_options(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "distill", "--set", "lr=2e-5")
    one_line_error(code, err, "--train-set lr=2e-5")


# --- export: --storage-dtype, not --dtype ----------------------------------------------------------


def test_export_storage_dtype_sets_the_stored_precision(monkeypatch, capsys, tmp_path):
    from safetensors import safe_open

    out = tmp_path / "fp16"
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out, "--storage-dtype", "float16")
    assert code in (0, None), err
    with safe_open(out / "model.safetensors", "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes == {"torch.float16"}


def test_export_dtype_is_refused_naming_storage_dtype(monkeypatch, capsys, tmp_path):
    out = tmp_path / "int8"
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out, "--dtype", "int8")
    one_line_error(code, err, "--dtype", "--storage-dtype int8")
    assert not out.exists()


def test_a_bad_storage_dtype_names_the_option(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", tmp_path / "x",
                           "--storage-dtype", "float8")
    one_line_error(code, err, "--storage-dtype", "float8")


@pytest.mark.parametrize("command, refused", [("distill", "--set"), ("export", "--dtype")])
def test_refused_spellings_are_hidden_from_help(monkeypatch, capsys, command, refused):
    code, out, _ = run_cli(monkeypatch, capsys, command, "-h")
    assert code in (0, None)
    options = [line.split()[0] for line in out.splitlines() if line.startswith("  -")]
    assert refused not in options and refused + "," not in options
    spelling = {"distill": "--train-set", "export": "--storage-dtype"}[command]
    assert spelling in out


# --- --model / -m beside --teacher / -t -----------------------------------------------------------


@pytest.mark.parametrize("spelling", ["--teacher", "-t", "--model", "-m"])
def test_distill_takes_every_spelling_of_the_teacher(monkeypatch, capsys, tmp_path, trained, spelling):
    traj = trajectory_folder(tmp_path)
    code, _, err = run_cli(monkeypatch, capsys, "distill", spelling, "tiny-teacher", "--trajectories", traj,
                           "--out", tmp_path / "student", "--train-set", "steps=1")
    assert code in (0, None), err
    assert trained["config"].init_from == "tiny-teacher"


@pytest.mark.parametrize("spelling", ["--teacher", "-m"])
def test_trajectories_takes_model_for_the_teacher(monkeypatch, capsys, tmp_path, spelling):
    import d3llm.trajectory.rollout as rollout

    seen = {}

    def fake_run(teacher, counts, out, **kwargs):
        seen.update(teacher=teacher, counts=counts, batch_size=kwargs["batch_size"])
        return Path(out)

    monkeypatch.setattr(rollout, "run", fake_run)
    code, _, err = run_cli(monkeypatch, capsys, "trajectories", spelling, "tiny-teacher", "--task", "arith=2",
                           "--out", tmp_path / "traj")
    assert code in (0, None), err
    assert seen == {"teacher": "tiny-teacher", "counts": {"arith": 2}, "batch_size": 16}


@pytest.mark.parametrize("command", [["distill"], ["trajectories"], ["trajectories", "import"],
                                     ["trajectories", "export"]])
def test_teacher_help_lists_both_spellings(monkeypatch, capsys, command):
    code, out, _ = run_cli(monkeypatch, capsys, *command, "-h")
    assert code in (0, None)
    line = next(line for line in out.splitlines() if "--teacher" in line)
    assert {"-t,", "-m,", "--model"} <= set(line.split()), line


# --- one default batch size -----------------------------------------------------------------------


def _defaults(name: str) -> dict[str, object]:
    from d3llm.cli import app

    group = typer.main.get_command(app)
    found = {}
    for command_name, command in group.commands.items():
        for param in command.params:
            if param.name == name:
                found[command_name] = param.default
    return found


def test_every_command_that_decodes_a_batch_of_prompts_defaults_to_16():
    assert _defaults("batch_size") == {"eval": 16, "sweep": 16, "trajectories": 16}


def test_the_library_defaults_match():
    from d3llm.eval.runner import evaluate
    from d3llm.eval.sweep import sweep
    from d3llm.trajectory.rollout import run

    for function in (evaluate, sweep, run):
        assert inspect.signature(function).parameters["batch_size"].default == 16, function.__name__


def test_the_lm_eval_adapter_default_matches():
    pytest.importorskip("lm_eval")
    from d3llm.eval.lm_eval_adapter import AUTO_BATCH_SIZE, D3llmLM, _batch_size

    assert AUTO_BATCH_SIZE == 16 == _batch_size(None, None)
    assert inspect.signature(D3llmLM).parameters["batch_size"].default == 16


def test_eval_decodes_16_problems_together_by_default(monkeypatch, capsys):
    import d3llm.eval.runner as runner

    seen = {}

    def fake_evaluate(lm, task, config, **kwargs):
        seen["batch_size"] = kwargs["batch_size"]
        raise SystemExit(0)

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    code, _, err = run_cli(monkeypatch, capsys, "eval", "-m", "tiny-ar", "--task", "arith", "--n", "1")
    assert code in (0, None), err
    assert seen == {"batch_size": 16}


# --- benchmark scripts: --task repeated, or --tasks a,b -------------------------------------------


def script(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def table_rows(stdout: str) -> list[tuple[str, str, str]]:
    """(model, task, method) of each row of the first Markdown table."""
    rows = []
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| tiny-ar |") and len(cells) == 7:
            rows.append(tuple(cells[:3]))
    return rows


def test_decode_presets_takes_task_and_method_repeated_or_as_comma_lists():
    common = ["benchmarks/decode_presets.py", "--model", "tiny-ar", "--n", "1", "--batch-sizes", "1",
              "--no-ceiling", "--threads", "1"]
    repeated = script(*common, "--task", "arith", "--task", "code", "--method", "ar")
    lists = script(*common, "--tasks", "arith,code", "--methods", "ar")
    assert repeated.returncode == 0, repeated.stderr
    assert lists.returncode == 0, lists.stderr
    expected = [("tiny-ar", "arith", "ar"), ("tiny-ar", "code", "ar")]
    assert table_rows(repeated.stdout) == expected, repeated.stdout
    assert table_rows(lists.stdout) == expected, lists.stdout


def test_decode_presets_help_shows_the_repeatable_spelling():
    shown = script("benchmarks/decode_presets.py", "-h")
    assert shown.returncode == 0, shown.stderr
    assert "--task TASK" in shown.stdout and "--method METHOD" in shown.stdout
    assert "--tasks" not in shown.stdout and "--methods" not in shown.stdout


def test_teacher_probe_refuses_set_naming_train_set():
    refused = script("benchmarks/teacher_probe.py", "--set", "lr=1e-4", "--steps", "0")
    assert refused.returncode == 2
    assert "--train-set lr=1e-4" in refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.stderr
