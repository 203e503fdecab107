"""Teacher rollouts and distillation end to end on a toy teacher: storage, resume under two
processes, a few distillation steps, and the errors for mismatched or damaged inputs."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch

from d3llm.errors import D3llmError
from d3llm.models import load_model
from d3llm.train.distill import distill_config
from d3llm.train.trainer import train
from d3llm.trajectory import store
from d3llm.trajectory.rollout import run
from tests.conftest import save_toy_model

ROLLOUT = dict(max_new_tokens=32, block_size=16, chunk_size=4, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_tokenizer):
    return save_toy_model(tmp_path_factory.mktemp("teacher") / "toy", tiny_tokenizer)


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory, teacher):
    return run(teacher, {"arith": 16}, tmp_path_factory.mktemp("traj") / "t", **ROLLOUT)


def test_records_hold_rank_vectors_and_a_rerun_changes_nothing(teacher, trajectories):
    manifest = store.read_manifest(trajectories)
    assert manifest["num_records"] == 16 and manifest["decode_config"]["tokens_per_step"] == 1
    rows, _ = store.load(trajectories, keep="all")
    assert [r["index"] for r in rows] == list(range(16))
    for r in rows:
        assert sorted(r["rank"]) == list(range(32))  # one token per step
        assert len(r["final_ids"]) == len(r["target_ids"]) == 32
        # teacher blocks of 16: the first block is finished before the second begins
        assert max(r["rank"][:16]) < min(r["rank"][16:])
    stamps = {p: p.stat().st_mtime_ns for p in (trajectories / "chunks").iterdir()}
    run(teacher, {"arith": 16}, trajectories, **ROLLOUT)
    assert {p: p.stat().st_mtime_ns for p in (trajectories / "chunks").iterdir()} == stamps


def _torchrun(teacher, out, n):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={port}", "-m", "d3llm.cli", "trajectories", "--teacher", str(teacher),
               "--task", f"arith={n}", "--out", str(out), "--max-new-tokens", "32", "--block-size", "16",
               "--chunk-size", "2", "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_two_process_rollouts_killed_and_resumed_lose_and_repeat_nothing(tmp_path, teacher):
    out, n = tmp_path / "sharded", 96
    proc = _torchrun(teacher, out, n)
    deadline = time.monotonic() + 180  # not time.time(): this machine's wall clock can step
    chunks = out / "chunks"
    while time.monotonic() < deadline and proc.poll() is None and len(list(chunks.glob("*.parquet"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]  # still running: the kill interrupts it
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "chunks").glob("*.parquet")))
    assert 2 <= done_before < n // 2 and not (out / store.MERGED).exists()
    resumed = _torchrun(teacher, out, n)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    merged = pq.read_table(out / store.MERGED).to_pylist()
    assert [r["index"] for r in merged] == list(range(n))
    # the same records as one uninterrupted process
    single = run(teacher, {"arith": n}, tmp_path / "single", **{**ROLLOUT, "chunk_size": 2, "batch_size": 2})
    assert merged == pq.read_table(single / store.MERGED).to_pylist()


def _distill(teacher, trajectories, out, **overrides):
    settings = {"steps": 40, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_every": 0, "threads": 1,
                "save_every": 40, "keep": "all", "progressive_noise": False, "progressive_window": False,
                "windows": [8], **overrides}
    return train(distill_config(str(teacher), str(trajectories), overrides=settings), out)


def test_a_few_distillation_steps_lower_the_loss(tmp_path, teacher, trajectories):
    out = _distill(teacher, trajectories, tmp_path / "student")
    history = json.loads((out / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    assert load_model(out).facts.family == "llada"
    assert json.loads((out / "provenance.json").read_text())["config"]["distill"]["masking"] == "trajectory"


def test_replay_adds_the_teachers_objective_on_fresh_examples(tmp_path, teacher, trajectories):
    short = dict(steps=4, save_every=4, tasks={"arith": 1.0}, num_examples=32)
    plain = load_model(_distill(teacher, trajectories, tmp_path / "plain", **short)).model.net.state_dict()
    out = _distill(teacher, trajectories, tmp_path / "replay", replay=1.0, **short)
    replayed = load_model(out).model.net.state_dict()
    assert any(not torch.equal(plain[k], replayed[k]) for k in plain)  # the second loss reached the weights
    assert json.loads((out / "provenance.json").read_text())["config"]["distill"]["replay"] == 1.0
    with pytest.raises(D3llmError, match="distill.replay"):
        _distill(teacher, trajectories, tmp_path / "bad", replay=-1.0)
    with pytest.raises(D3llmError, match="num_examples"):  # one example over two tasks rounds to none
        _distill(teacher, trajectories, tmp_path / "none", replay=1.0, tasks={"arith": 1.0, "code": 1.0},
                 num_examples=1)


def test_lora_student_saves_a_plain_model(tmp_path, teacher, trajectories):
    out = _distill(teacher, trajectories, tmp_path / "lora", steps=4, save_every=4, lora_rank=4)
    student, original = load_model(out).model.net.state_dict(), load_model(teacher).model.net.state_dict()
    assert student.keys() == original.keys()  # adapters folded in
    assert any((student[k] != original[k]).any() for k in student)
    # run again: its checkpoint (adapter weights only) is recognised, resumed at step 4, and
    # the same merged model comes out
    again = _distill(teacher, trajectories, tmp_path / "lora", steps=4, save_every=4, lora_rank=4)
    assert json.loads((again / "runs.jsonl").read_text().splitlines()[-1])["start_step"] == 4
    assert all(torch.equal(student[k], v) for k, v in load_model(again).model.net.state_dict().items())


def test_trajectories_of_another_teacher_or_tokenizer_are_refused(tmp_path, tiny_tokenizer, trajectories):
    other = save_toy_model(tmp_path / "other", tiny_tokenizer, seed=5)
    with pytest.raises(D3llmError, match="holds rollouts of"):
        _distill(other, trajectories, tmp_path / "s1")
    from d3llm.models.tokenizer import build_tokenizer

    foreign = build_tokenizer(["a b c 1 2 3 def return"], vocab_size=280)
    odd = save_toy_model(tmp_path / "odd", foreign)
    with pytest.raises(D3llmError, match="another tokenizer"):
        _distill(odd, trajectories, tmp_path / "s2")


def test_damaged_missing_or_empty_trajectory_sets(tmp_path, teacher, trajectories):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trajectories, copy)
    (copy / store.MERGED).unlink()
    chunk = store.chunk_path(copy, 1)
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated
    with pytest.raises(D3llmError, match="chunk-00001.parquet is damaged or truncated"):
        store.load(copy)
    chunk.unlink()
    with pytest.raises(D3llmError, match="1 of 4 chunks are missing"):
        store.load(copy)
    # a random toy teacher answers nothing right: keep=correct leaves no examples
    with pytest.raises(D3llmError, match="no trajectories to train on"):
        store.load(trajectories, keep="correct")


def test_other_settings_into_the_same_folder_are_refused(teacher, trajectories):
    before = (trajectories / store.MANIFEST).read_bytes()
    with pytest.raises(D3llmError, match="different settings"):
        run(teacher, {"arith": 11}, trajectories, **ROLLOUT)
    assert (trajectories / store.MANIFEST).read_bytes() == before


def test_a_canvas_too_short_for_the_targets_fails_before_any_rollout(tmp_path, teacher):
    with pytest.raises(D3llmError, match="more than `gen_length`=8"):
        run(teacher, {"arith": 4}, tmp_path / "short", **{**ROLLOUT, "max_new_tokens": 8})
    assert not (tmp_path / "short" / "chunks").exists()


def test_a_block_teacher_rolls_out_its_own_blocks_and_its_student_learns(tmp_path, tiny_tokenizer):
    """Block diffusion: the teacher decodes its own blocks (4) in order, a block size given for
    it must be its own, and the student trains on windows that are its blocks."""
    teacher = save_toy_model(tmp_path / "block", tiny_tokenizer, family="block", block_size=4)
    settings = {**ROLLOUT, "block_size": None}
    with pytest.raises(D3llmError, match="trained with blocks of 4"):
        run(teacher, {"arith": 4}, tmp_path / "bad", **{**settings, "block_size": 16})
    trajectories = run(teacher, {"arith": 16}, tmp_path / "traj", **settings)
    assert store.read_manifest(trajectories)["decode_config"]["block_size"] == 4
    for r in store.load(trajectories, keep="all")[0]:
        assert all(max(r["rank"][i : i + 4]) < min(r["rank"][i + 4 : i + 8]) for i in range(0, 28, 4))
    out = _distill(teacher, trajectories, tmp_path / "student")
    history = json.loads((out / "checkpoints" / "checkpoint-40" / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 4 and losses[-1] < 0.7 * losses[0], losses
    student = load_model(out)
    assert student.facts.family == "block" and student.facts.block_size == 4
    assert json.loads((out / "provenance.json").read_text())["config"]["eval_method"] == "d3llm-block"
