"""Evaluate a model on a task with a decode config: accuracy, TPF, tokens/s.

    result = evaluate(lm, get_task("arith"), preset("vanilla"), n=200, seed=0)
    result.accuracy_pct, result.tokens_per_forward, result.tokens_per_second
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from d3llm.decode import DecodeConfig, generate
from d3llm.models import LoadedModel
from d3llm.tasks import Task
from d3llm.models.tokenizer import prompt_ids


@dataclass
class EvalResult:
    model: str
    task: str
    method: str
    n: int
    seed: int
    split: str
    accuracy_pct: float
    tokens_per_forward: float
    tokens_per_second: float
    nfe: int
    num_tokens: int
    seconds: float
    decode_config: dict

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(
    lm: LoadedModel,
    task: Task,
    config: DecodeConfig,
    n: int,
    seed: int = 0,
    split: str = "test",
    batch_size: int = 8,
    progress: Callable[[int], None] | None = None,
) -> EvalResult:
    """Decode `n` problems of `split` in batches, score them, and total the counts."""
    problems = task.problems(split, n, seed)
    correct = nfe = tokens = 0
    seconds = 0.0
    tok = lm.tokenizer
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        out = generate(lm.model, [prompt_ids(tok, p.prompt) for p in chunk], config, tok.pad_token_id)
        texts = [tok.decode(ids, skip_special_tokens=True) for ids in out.sequences]
        correct += sum(task.score_many(chunk, texts))
        nfe += out.nfe
        tokens += sum(out.num_tokens)
        seconds += out.seconds
        if progress:
            progress(len(chunk))
    return EvalResult(
        model=lm.name, task=task.name, method=config.method, n=len(problems), seed=seed, split=split,
        accuracy_pct=100.0 * correct / max(len(problems), 1),
        tokens_per_forward=tokens / max(nfe, 1), tokens_per_second=tokens / max(seconds, 1e-9),
        nfe=nfe, num_tokens=tokens, seconds=seconds, decode_config=asdict(config),
    )
