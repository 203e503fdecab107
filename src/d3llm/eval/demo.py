"""The demo behind `make demo`: every bundled model on every task, one table.

Each diffusion model is decoded with `vanilla` (LLaDA, one token per forward) and the AR
model with `ar` (greedy, KV cache), on the same held-out test problems. The decode-engine
work adds the fast presets (Fast-dLLM, dParallel, d3LLM) to this table.
"""

from __future__ import annotations

from collections.abc import Callable

from d3llm.decode import preset
from d3llm.errors import D3llmError
from d3llm.eval.runner import EvalResult, evaluate
from d3llm.models import bundled_models, load_model
from d3llm.tasks import TASK_NAMES, get_task


def run_demo(n: int = 20, seed: int = 0, progress: Callable[[str], None] | None = None) -> list[EvalResult]:
    names = list(bundled_models())
    if not names:
        raise D3llmError("no bundled models are installed (train them: see README, 'Bundled models')")
    results = []
    for name in names:
        lm = load_model(name)
        method = "vanilla" if lm.facts.is_diffusion else "ar"
        for task in TASK_NAMES:
            if progress:
                progress(f"{name} / {task} / {method}")
            results.append(evaluate(lm, get_task(task), preset(method), n=n, seed=seed))
    return results
