"""Evaluate a model on a task with a decode config: accuracy, TPF, tokens/s.

    result = evaluate(lm, get_task("arith"), preset("vanilla"))  # the fixed test set: 600 problems
    result.accuracy_pct, result.accuracy_ci_pct, result.tokens_per_forward, result.tokens_per_second

By default it scores the task's fixed test set (`d3llm.tasks.fixed_test_set`). `n` must be >=
1; asking a GSM8K file task for more problems than its file holds evaluates all of them (as
lm-eval's `--limit` does), and `samples=[]` collects one record per problem (prompt, response,
extracted and reference answer, correct, the row's NFE and TPF).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable

import torch

from d3llm.decode import DecodeConfig, generate
from d3llm.decode.config import for_facts
from d3llm.errors import D3llmError
from d3llm.eval.results import EvalResult  # the record (one definition; re-exported here)
from d3llm.models import LoadedModel
from d3llm.models.tokenizer import prompt_ids
from d3llm.tasks import Gsm8kJsonlTask, Problem, Task
from d3llm.tasks.base import FIXED_TEST_N, FIXED_TEST_SEED, check_count
from d3llm.version import code_version


def available_problems(task: Task, split: str) -> int | None:
    """How many problems `split` of `task` holds: a file's line count for a GSM8K file task,
    None for a generated task (it draws as many as asked)."""
    if isinstance(task, Gsm8kJsonlTask):
        return len(task._split(split))
    return None


def clamp_n(task: Task, split: str, n: int) -> tuple[int, str | None]:
    """`n` checked (>= 1) and clamped to what `split` of `task` holds, as lm-eval's `--limit`
    clamps; returns (n to use, a one-line note when clamped, else None)."""
    check_count(n, "`n`", low=1)
    size = available_problems(task, split)
    if size is not None and n > size:
        return size, f"{task.name} {split}: n={n} is more than the {size} problems there; evaluating all {size}"
    return n, None


def check_batch_size(batch_size: object, what: str = "`batch_size`") -> int:
    """`batch_size` as a count of problems decoded together (>= 1), else an error naming `what`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise D3llmError(f"{what} must be >= 1 (problems decoded together), got {batch_size!r}")
    return batch_size


def evaluate(
    lm: LoadedModel,
    task: Task,
    config: DecodeConfig,
    n: int = FIXED_TEST_N,
    seed: int = FIXED_TEST_SEED,
    split: str = "test",
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    samples: list[dict] | None = None,
) -> EvalResult:
    """Decode `n` problems of `split` in batches, score them, and total the counts (by default
    the fixed test set).

    `n` must be >= 1; more than a file task holds is clamped to all of them (`clamp_n`), and
    the result's `n` says how many were evaluated. With a list as `samples`, one record per
    problem is appended to it, in problem order (`sample_record`)."""
    n, _ = clamp_n(task, split, n)
    check_batch_size(batch_size)
    problems = task.problems(split, n, seed)
    correct = nfe = calls = tokens = 0
    seconds = forward_seconds = 0.0
    profile: dict[str, list] = {}
    tok = lm.tokenizer
    prompts = [prompt_ids(tok, p.prompt) for p in problems]
    per_problem: dict[int, dict] = {}
    # Batches of similar prompt lengths: rows are left-padded to the longest prompt of their batch.
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))
    # Warm-up (untimed, unscored): first calls pay for allocations and kernel selection.
    generate(lm.model, [prompts[0]], config, tok.pad_token_id)
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        chunk = [problems[i] for i in indices]
        out = generate(lm.model, [prompts[i] for i in indices], config, tok.pad_token_id)
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in out.sequences]
        scores = task.score_many(chunk, texts)
        correct += sum(scores)
        nfe += sum(out.row_forwards)
        calls += out.nfe
        tokens += sum(out.num_tokens)
        seconds += out.seconds
        forward_seconds += out.forward_seconds
        for kind, counts in out.profile.items():
            profile[kind] = [a + b for a, b in zip(profile.get(kind, [0, 0, 0.0]), counts)]
        if samples is not None:
            for row, i in enumerate(indices):
                per_problem[i] = sample_record(task, problems[i], texts[row], scores[row],
                                               out.row_forwards[row], out.num_tokens[row])
        if progress:
            progress(len(chunk))
    if samples is not None:
        samples.extend(per_problem[i] for i in range(len(problems)))
    return EvalResult(
        model=lm.name, task=task.name, method=config.method, n=len(problems), seed=seed, split=split,
        accuracy_pct=100.0 * correct / max(len(problems), 1), correct=correct,
        tokens_per_forward=tokens / max(nfe, 1), tokens_per_second=tokens / max(seconds, 1e-9),
        nfe=nfe, forward_calls=calls, num_tokens=tokens, seconds=seconds, forward_seconds=forward_seconds,
        forward_profile=profile, decode_config=for_facts(config, lm.facts).settings(),
        code_version=code_version(), machine=machine_description(lm.model.device),
        dtype=str(lm.model.dtype).removeprefix("torch."),
    )


def sample_record(task: Task, problem: Problem, response: str, correct: bool, forwards: int, num_tokens: int) -> dict:
    """One line of `d3llm eval --log-samples`: what was asked, answered and scored, and the
    row's own forwards (NFE) and tokens per forward (TPF = num_tokens / nfe)."""
    return {"task": task.name, "prompt": problem.prompt, "response": response,
            "extracted_answer": task.extract_answer(response), "reference_answer": problem.answer,
            "correct": bool(correct), "nfe": forwards, "num_tokens": num_tokens,
            "tpf": num_tokens / max(forwards, 1)}


def machine_description(where: torch.device | None = None) -> str:
    """Where a number was measured: the GPU the model ran on, or the CPU model; core count,
    torch version."""
    if where is not None and where.type == "cuda":
        device = torch.cuda.get_device_name(where)
    elif where is not None and where.type == "mps":
        device = f"Apple MPS ({platform.machine()})"
    else:
        device = platform.processor() or platform.machine()
    return f"{device}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
