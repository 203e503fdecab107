"""`d3llm trajectories`: teacher rollouts through the decode loop, stored as rank vectors.

The teacher decodes each prompt one token per step in blocks (docs/method.md
section 1) with the ordinary decode loop (`d3llm.decode.generate`, `vanilla` preset): LLaDA
teachers commit the most probable proposal of the block, Dream teachers the lowest-entropy one.
The loop's trace (step at which each position was committed) is the rank vector.

Work is cut into chunks of `chunk_size` prompts; process `rank` of `world_size` (torchrun /
accelerate set RANK and WORLD_SIZE) takes chunks `rank, rank + world_size, ...` and skips
chunks already on disk, so the same command resumes a killed run. When every chunk is there,
the first process merges them (`store.merge`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from d3llm.decode import generate, preset
from d3llm.decode.config import for_facts
from d3llm.errors import D3llmError
from d3llm.models import LoadedModel, load_model, resolve_device_dtype
from d3llm.models.tokenizer import encode_example, prompt_ids
from d3llm.tasks import Problem, get_task
from d3llm.trajectory import store
from d3llm.version import code_version

log = logging.getLogger(__name__)


def teacher_config(lm: LoadedModel, max_new_tokens: int, block_size: int | None):
    """One token per step, blocks of `block_size` (None: the model's, `for_model`), the
    family's selection rule, no early stop."""
    if lm.facts.family == "block":  # its own blocks, in order, with its exact cache
        return preset("block", max_new_tokens=max_new_tokens, block_size=block_size, early_stop=False)
    rank_by = "entropy" if lm.facts.family == "dream" else "confidence"
    return preset("vanilla", max_new_tokens=max_new_tokens, block_size=block_size, tokens_per_step=1,
                  rank_by=rank_by, early_stop=False, temperature=0.0)


def work_list(tasks: dict[str, int], split: str, seed: int) -> list[Problem]:
    """The problems to roll out, in a fixed order: each task's `n` problems of `split`."""
    if not tasks:
        raise D3llmError("give at least one task, e.g. --task arith=2000")
    problems = []
    for name, n in tasks.items():
        if n <= 0:
            raise D3llmError(f"the number of problems for task {name!r} must be positive, got {n}")
        problems += get_task(name).problems(split, n, seed)
    return problems


def rollout_records(lm: LoadedModel, problems: list[Problem], first_index: int, config, batch_size: int) -> list[dict]:
    """Decode `problems` with the teacher; one record per problem (see `store` for the columns)."""
    tok, n = lm.tokenizer, config.max_new_tokens
    records = []
    for start in range(0, len(problems), batch_size):
        batch = problems[start : start + batch_size]
        prompts = [prompt_ids(tok, p.prompt) for p in batch]
        out = generate(lm.model, prompts, config, tok.pad_token_id)
        finals = out.response.tolist()
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in out.sequences]
        scores = _score(batch, texts)
        for row, (problem, prompt) in enumerate(zip(batch, prompts)):
            rank = out.trace[row].tolist()
            if sorted(rank) != list(range(n)):
                raise D3llmError("the teacher's trace is not one token per step; rollouts need tokens_per_step=1")
            target = encode_example(tok, problem, n)["input_ids"][-n:]
            records.append({
                "index": first_index + start + row, "task": problem.task, "prompt_ids": prompt,
                "final_ids": finals[row], "target_ids": target, "rank": rank, "correct": bool(scores[row]),
            })
    return records


def _score(problems: list[Problem], texts: list[str]) -> list[bool]:
    """Scores in order, each task's problems scored together (code runs them in one sandbox pass)."""
    scores: list[bool] = [False] * len(problems)
    for name in {p.task for p in problems}:
        rows = [i for i, p in enumerate(problems) if p.task == name]
        for i, ok in zip(rows, get_task(name).score_many([problems[i] for i in rows], [texts[i] for i in rows])):
            scores[i] = ok
    return scores


def run(
    teacher: str | Path,
    tasks: dict[str, int],
    out: str | Path,
    split: str = "train",
    seed: int = 0,
    max_new_tokens: int = 64,
    block_size: int | None = None,  # None: 32, or a block model's own
    chunk_size: int = 64,
    batch_size: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
) -> Path:
    """Roll out (or resume) into `out`; returns the folder once every chunk is merged.
    `progress(what, done, total)`: told on rank 0 as rollouts of this run complete.
    `device`, `dtype`: see `d3llm.models.loading.resolve_device_dtype`; under torchrun a CUDA
    device without an index is each process's own GPU (LOCAL_RANK)."""
    out = Path(out)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if chunk_size <= 0 or batch_size <= 0:
        raise D3llmError("`chunk_size` and `batch_size` must be positive")
    device, dtype = resolve_device_dtype(device, dtype)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    lm = load_model(teacher, device=device, dtype=dtype)
    if not lm.facts.is_diffusion:
        raise D3llmError(f"the teacher must be a diffusion model; {teacher} is autoregressive")
    config = for_facts(teacher_config(lm, max_new_tokens, block_size), lm.facts)
    problems = work_list(tasks, split, seed)
    for problem in problems:  # a target longer than the canvas fails now, not hours into the run
        try:
            encode_example(lm.tokenizer, problem, max_new_tokens)
        except D3llmError as exc:
            raise D3llmError(f"{exc} (the response canvas): raise `max_new_tokens`") from None
    manifest = {
        "format": store.FORMAT, "version": store.VERSION, "teacher": str(teacher),
        "teacher_fingerprint": store.fingerprint(lm.path), "tokenizer_fingerprint": store.tokenizer_fingerprint(lm.tokenizer),
        "family": lm.facts.family, "work": {"tasks": tasks, "split": split, "seed": seed},
        "num_records": len(problems), "chunk_size": chunk_size, "decode_config": config.settings(),
        "code_version": code_version(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    if rank == 0:
        store.write_manifest(out, manifest)
    group = _process_group(world)
    if group:
        torch.distributed.barrier()  # the manifest exists before anyone writes chunks
    sizes = store.chunk_sizes(manifest)
    mine = [c for c in range(rank, len(sizes), world) if not store.chunk_path(out, c).is_file()]
    total, done = sum(sizes[c] for c in mine), 0
    for chunk in mine:
        first = chunk * chunk_size
        records = rollout_records(lm, problems[first : first + sizes[chunk]], first, config, batch_size)
        store.write_chunk(out, chunk, records)
        done += len(records)
        if progress and rank == 0:
            progress(f"teacher rollouts (rank 0 of {world})", done, total)
    if group:
        torch.distributed.barrier()
    if rank == 0:
        merged = store.merge(out)
        correct = sum(merged.column("correct").to_pylist())
        log.info("%d trajectories in %s (%d correct)", merged.num_rows, out, correct)
    if group:
        torch.distributed.destroy_process_group()
    return out


def _process_group(world: int) -> bool:
    if world <= 1:
        return False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return True
