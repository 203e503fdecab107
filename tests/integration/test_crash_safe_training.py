"""A training run survives a crash at any write: kill -9 at each file write, or a file left
empty or cut short (what a crash of a non-atomic write leaves), and the rerun of the same
command ends with weights identical to an uninterrupted run; a damaged file that cannot be
recovered is named in one line with what to do.

The kill points: the run's every atomic rename (os.replace: 13 in this recipe, counted by the
driver), and the Trainer writing half of trainer_state.json. Two run by default, every one
with `-m slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from d3llm.errors import D3llmError
from d3llm.train.config import TrainConfig
from d3llm.train.trainer import train
from tests.conftest import run_cli

RECIPE = {
    "family": "llada", "tasks": {"arith": 1.0}, "vocab_size": 300, "gen_length": 32, "num_examples": 64,
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "max_length": 256},
    "batch_size": 8, "lr": 3.0e-3, "warmup_steps": 2, "eval_every": 0, "threads": 1, "steps": 6, "save_every": 2,
}
WRITES = 13  # os.replace calls of one uninterrupted run of RECIPE (test_the_driver_counts_the_writes)

# Runs RECIPE into argv[1] and kills itself with SIGKILL at the argv[2]-th os.replace (-1: count
# them and print the count; 0: no kill), or with argv[2] == "state" after writing half of the
# trainer_state.json of step 4.
DRIVER = f'''
import json, os, signal, sys
out, point = sys.argv[1], sys.argv[2]
count = [0]
if point == "state":
    from transformers.trainer_callback import TrainerState
    save = TrainerState.save_to_json
    def half(self, path):
        save(self, path)
        if self.global_step == 4:
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    TrainerState.save_to_json = half
else:
    replace = os.replace
    def counted(src, dst, **kw):
        count[0] += 1
        if count[0] == int(point):
            os.kill(os.getpid(), signal.SIGKILL)
        return replace(src, dst, **kw)
    os.replace = counted
from d3llm.train.config import TrainConfig
from d3llm.train.trainer import train
train(TrainConfig.from_dict(json.loads({json.dumps(json.dumps(RECIPE))})), out)
print("WRITES", count[0])
'''


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def drive(out: Path, point: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", DRIVER, str(out), point], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run."""
    return train(TrainConfig.from_dict(RECIPE), tmp_path_factory.mktemp("reference") / "run")


KILLS = [pytest.param("1", id="write-1-train_config"), pytest.param("state", id="trainer_state-half-written")]
KILLS += [pytest.param(str(k), id=f"write-{k}", marks=pytest.mark.slow) for k in range(2, WRITES + 1)]


@pytest.mark.parametrize("point", KILLS)
def test_kill_9_at_a_write_then_rerun_gives_the_same_weights(point, reference, tmp_path):
    out = tmp_path / "run"
    killed = drive(out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "provenance.json").exists()  # it died before the end
    assert train(TrainConfig.from_dict(RECIPE), out) == out  # the rerun, as `d3llm train` would
    assert same_weights(out, reference)
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert 1 <= len(runs) <= 2  # the killed invocation may have died before logging itself
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.slow
def test_the_driver_counts_the_writes(tmp_path):
    done = drive(tmp_path / "run", "-1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"WRITES {WRITES}" in done.stdout


def _copy_of(reference: Path, tmp_path: Path) -> Path:
    """The reference run as a crash would have left it: final files gone, checkpoints kept."""
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    for name in ("provenance.json", "model.safetensors", "config.json", "generation_config.json"):
        (out / name).unlink(missing_ok=True)
    return out


DAMAGE = {  # what a crash of a non-atomic write leaves: (path under the run, bytes or a cut)
    "empty-trainer_state": ("checkpoints/checkpoint-6/trainer_state.json", b""),
    "cut-trainer_state": ("checkpoints/checkpoint-6/trainer_state.json", 0.5),
    "cut-weights": ("checkpoints/checkpoint-6/model.safetensors", 0.5),
    "cut-optimizer": ("checkpoints/checkpoint-6/optimizer.pt", 0.5),
    "cut-scheduler": ("checkpoints/checkpoint-6/scheduler.pt", 0.3),
    "cut-rng-state": ("checkpoints/checkpoint-6/rng_state.pth", 0.5),
    "empty-train_seconds": ("train_seconds", b""),
    "garbage-train_seconds": ("train_seconds", b"12.\x00"),
    "cut-runs.jsonl": ("runs.jsonl", 0.7),
    "a-checkpoint-final-folder": ("checkpoints/checkpoint-final/trainer_state.json", b"{}"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_file_falls_back_and_the_rerun_gives_the_same_weights(damage, reference, tmp_path):
    out = _copy_of(reference, tmp_path)
    name, content = DAMAGE[damage]
    path = out / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, float):
        data = path.read_bytes()
        content = data[: int(len(data) * content)]
    path.write_bytes(content)
    assert train(TrainConfig.from_dict(RECIPE), out) == out
    assert same_weights(out, reference)
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["train_seconds"] >= 0 and len(provenance["invocations"]) >= 1


@pytest.mark.parametrize("content", [b"", b"steps: [1,\n", b"- a list\n", b"\xff\xfe"])
def test_a_damaged_train_config_is_named_in_one_line(content, reference, tmp_path, monkeypatch, capsys):
    out = _copy_of(reference, tmp_path)
    (out / "train_config.yaml").write_bytes(content)
    (tmp_path / "recipe.yaml").write_text(json.dumps(RECIPE))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", tmp_path / "recipe.yaml", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "train_config.yaml" in err and ("damaged" in err or "YAML" in err), err
    with pytest.raises(D3llmError, match="train_config.yaml"):
        train(TrainConfig.from_dict(RECIPE), out)


def test_a_cut_curve_line_is_dropped(tmp_path):
    """With validation on, curve.jsonl is read back on resume: a last line cut short by a crash
    (of a plain append) is dropped, not a traceback."""
    recipe = {**RECIPE, "steps": 2, "save_every": 2, "eval_every": 2, "eval_n": 2}
    out = train(TrainConfig.from_dict(recipe), tmp_path / "run")
    rows = (out / "curve.jsonl").read_text()
    (out / "curve.jsonl").write_text(rows + '{"step": 3, "arith_acc')
    (out / "provenance.json").unlink()
    assert train(TrainConfig.from_dict(recipe), out) == out
    final = json.loads((out / "provenance.json").read_text())["final_validation"]
    assert final == json.loads(rows.splitlines()[-1])  # the last whole record, not the cut one


def test_train_refuses_a_folder_with_a_users_model_and_overwrite_allows(tmp_path, monkeypatch, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    user = {"config.json": '{"mine": 1}', "model.safetensors": "weights", "notes.txt": "notes"}
    for name, text in user.items():
        (out / name).write_text(text)
    (tmp_path / "recipe.yaml").write_text(json.dumps({**RECIPE, "steps": 1, "save_every": 1}))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", tmp_path / "recipe.yaml", "--out", out)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1, err
    assert {p.name: p.read_text() for p in out.iterdir()} == user
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", tmp_path / "recipe.yaml", "--out", out,
                           "--overwrite")
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "notes" and (out / "train_config.yaml").is_file()
