"""`d3llm train`: the loss falls, a killed run resumes, two data-parallel processes run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from d3llm.models import load_model
from d3llm.train.config import TrainConfig
from d3llm.train.trainer import train

TINY = {
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64, "max_length": 256},
    "tasks": {"arith": 1.0}, "vocab_size": 300, "gen_length": 32, "num_examples": 256, "batch_size": 8,
    "lr": 3.0e-3, "warmup_steps": 5, "eval_every": 0, "threads": 1,
}


def losses(out: Path) -> list[float]:
    last = max((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


@pytest.mark.parametrize("family", ["llada", "ar"])
def test_a_few_dozen_steps_lower_the_loss(tmp_path, family):
    config = TrainConfig.from_dict({**TINY, "family": family, "steps": 40, "save_every": 40})
    out = train(config, tmp_path / family)
    curve = losses(out)
    assert len(curve) == 4 and curve[-1] < 0.8 * curve[0], curve
    lm = load_model(out)  # the final folder loads like any model
    assert lm.facts.family == family
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["seed"] == 0 and provenance["config"]["steps"] == 40 and provenance["train_seconds"] > 0


def test_dream_adapts_from_an_ar_model(tmp_path):
    ar = train(TrainConfig.from_dict({**TINY, "family": "ar", "steps": 10, "save_every": 10}), tmp_path / "ar")
    dream = train(TrainConfig.from_dict({**TINY, "family": "dream", "steps": 10, "save_every": 10,
                                         "init_from": str(ar), "tokenizer_from": str(ar)}), tmp_path / "dream")
    lm = load_model(dream)
    assert lm.facts.family == "dream" and lm.facts.mask_token_id == lm.tokenizer.mask_token_id
    # the second stage's records carry the first stage's, as they were when it started
    first = json.loads((ar / "provenance.json").read_text())
    (ar / "provenance.json").write_text("{}")  # the source changes later (a bundled name re-bundled)
    dream = train(TrainConfig.from_dict({**TINY, "family": "dream", "steps": 10, "save_every": 10,
                                         "init_from": str(ar), "tokenizer_from": str(ar)}), tmp_path / "dream")
    assert json.loads((dream / "provenance.json").read_text())["started_from"] == first
    assert "started_from" not in first  # from scratch: no earlier stage


def test_stop_at_ends_early_on_the_recipes_schedule(tmp_path):
    from d3llm.errors import D3llmError

    config = TrainConfig.from_dict({**TINY, "family": "llada", "steps": 12, "save_every": 4})
    with pytest.raises(D3llmError, match="`--stop-at` must be in 1..12"):
        train(config, tmp_path / "bad", stop_at=13)
    out = train(config, tmp_path / "run", stop_at=8)
    state = json.loads((out / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["max_steps"] == 12  # the 12-step schedule, stopped at 8
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["stopped_at"] == 8 and provenance["config"]["steps"] == 12
    weights = {k: v.clone() for k, v in load_model(out).model.net.state_dict().items()}
    again = train(config, out, stop_at=8)  # already there: writes the same model, trains nothing
    assert all(torch.equal(weights[k], v) for k, v in load_model(again).model.net.state_dict().items())
    with pytest.raises(D3llmError, match="already at step 8, past `--stop-at` 4"):
        train(config, out, stop_at=4)


def _cli_train(config_path: Path, out: Path, launcher: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*(launcher or [sys.executable, "-m"]), "d3llm.cli", "train", "--config", str(config_path), "--out", str(out)]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    config_path = tmp_path / "cfg.yaml"
    # Long enough that the run cannot end between the checkpoint appearing and the kill.
    config_path.write_text(yaml.safe_dump({**TINY, "family": "llada", "steps": 150, "save_every": 5}))
    out = tmp_path / "run"
    proc = _cli_train(config_path, out)
    deadline = time.monotonic() + 120  # not time.time(): this machine's wall clock can step

    def saved_past_step_10() -> bool:  # any: the Trainer keeps only the last two checkpoints
        return any(int(c.name.split("-")[1]) >= 10 and (c / "trainer_state.json").exists()
                   for c in (out / "checkpoints").glob("checkpoint-*"))

    while time.monotonic() < deadline and proc.poll() is None and not saved_past_step_10():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]  # still running: the kill interrupts it
    assert saved_past_step_10(), "no checkpoint past step 10 in 120 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "provenance.json").exists()  # it really died before the end
    second = _cli_train(config_path, out)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and runs[0]["start_step"] == 0 and runs[1]["start_step"] >= 10
    final = json.loads((out / "checkpoints" / "checkpoint-150" / "trainer_state.json").read_text())
    assert final["global_step"] == 150


def test_two_data_parallel_processes(tmp_path):
    config_path = tmp_path / "cfg.yaml"
    config_path.write_text(yaml.safe_dump({**TINY, "family": "llada", "steps": 6, "save_every": 6}))
    out = tmp_path / "ddp"
    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                "--master_addr=127.0.0.1", f"--master_port={port}", "-m"]
    proc = _cli_train(config_path, out, launcher)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert runs == [runs[0]] and runs[0]["world_size"] == 2
    assert load_model(out).facts.family == "llada"
