"""`d3llm distill` under `accelerate launch` (2 CPU processes, gloo), killed with SIGKILL and
resumed; and the at-scale switches (bf16, gradient checkpointing, accumulation, LoRA) on a toy.

configs/accelerate-cpu-2proc.yaml is the launch config under test: accelerate's own CPU modes
start one process only on this kind of machine (docs/platform-notes.md).
"""

from __future__ import annotations

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

from d3llm.errors import D3llmError
from d3llm.models import load_model
from d3llm.train.distill import distill_config
from d3llm.train.trainer import train
from d3llm.trajectory.rollout import run
from tests.conftest import save_toy_model

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_every": 0, "threads": 1, "keep": "all",
            "windows": [8]}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_tokenizer):
    return save_toy_model(tmp_path_factory.mktemp("teacher") / "toy", tiny_tokenizer)


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, teacher):
    return run(teacher, {"arith": 16}, tmp_path_factory.mktemp("traj") / "t", max_new_tokens=32, block_size=16,
               chunk_size=8, batch_size=8, progress=False)


def _accelerate_distill(teacher, trajectories, out: Path, steps: int) -> subprocess.Popen:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sets = {**SETTINGS, "steps": steps, "save_every": 5}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate-cpu-2proc.yaml"), "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "-m", "d3llm.cli", "distill", "--teacher", str(teacher),
               "--trajectories", str(trajectories), "--out", str(out),
               *[x for k, v in sets.items() for x in ("--train-set", f"{k}={json.dumps(v)}")]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [
        str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)


# slow (make test-all): on a loaded 2-core machine the resumed launch can fail or hang in the gloo
# teardown after training finished (rank 0 exit 1; both ranks idle after writing the model), while
# it passes alone: an open teardown race (docs/notebook/2026-12-07-official-decoders.md)
@pytest.mark.slow
def test_accelerate_launch_two_processes_killed_and_resumed(tmp_path, teacher, trajectories):
    out, steps = tmp_path / "student", 200
    proc = _accelerate_distill(teacher, trajectories, out, steps)
    deadline = time.monotonic() + 240  # not time.time(): this machine's wall clock can step

    def saved_past_step_10() -> bool:  # any: the Trainer keeps only the last two checkpoints
        return any(int(c.name.split("-")[1]) >= 10 and (c / "trainer_state.json").exists()
                   for c in (out / "checkpoints").glob("checkpoint-*"))

    while time.monotonic() < deadline and proc.poll() is None and not saved_past_step_10():
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]  # still running: the kill interrupts it
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    assert not (out / "provenance.json").exists()  # it really died before the end
    resumed = _accelerate_distill(teacher, trajectories, out, steps)
    _, err = resumed.communicate(timeout=600)
    # the root cause is in rank 0's lines; rank 1's teardown traceback would crowd it out
    assert resumed.returncode == 0, "\n".join(line for line in err.splitlines() if "[rank1]" not in line)[-4000:]
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [r["world_size"] for r in runs] == [2, 2]
    assert runs[0]["start_step"] == 0 and runs[1]["start_step"] >= 10
    state = json.loads((out / "checkpoints" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    assert load_model(out, device="cpu").facts.family == "llada"


def test_bf16_gradient_checkpointing_accumulation_and_lora(tmp_path, teacher, trajectories):
    sets = {**SETTINGS, "steps": 2, "save_every": 2, "precision": "bfloat16", "gradient_checkpointing": True,
            "gradient_accumulation_steps": 2, "lora_rank": 4}
    out = train(distill_config(str(teacher), str(trajectories), overrides=sets), tmp_path / "bf16")
    state = json.loads((out / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    student = load_model(out, device="cpu", dtype="float32").model.net.state_dict()
    original = load_model(teacher, device="cpu").model.net.state_dict()
    assert student.keys() == original.keys()  # the adapters are merged
    assert any(not torch.equal(student[k], original[k]) for k in student)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:  # trained and saved in bf16
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}


@pytest.mark.parametrize("sets, message", [
    ({"precision": "float16"}, "`precision` must be one of float32, bfloat16"),
    ({"gradient_accumulation_steps": 0}, "`gradient_accumulation_steps` must be >= 1"),
    ({"deepspeed": "no/such.json"}, "no such file"),
])
def test_bad_scale_settings(teacher, trajectories, sets, message):
    with pytest.raises(D3llmError, match=message):
        distill_config(str(teacher), str(trajectories), overrides=sets)


def test_deepspeed_without_the_package_is_one_clear_error(teacher, trajectories):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:  # then the config is accepted instead
        distill_config(str(teacher), str(trajectories), overrides={"deepspeed": str(ROOT / "configs/deepspeed-zero2.json")})
        return
    with pytest.raises(D3llmError, match="needs the deepspeed package"):
        distill_config(str(teacher), str(trajectories), overrides={"deepspeed": str(ROOT / "configs/deepspeed-zero2.json")})
