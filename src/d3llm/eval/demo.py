"""The demo behind `make demo`: every bundled model on every task, one table.

Each diffusion model is decoded with every diffusion preset (vanilla LLaDA decoding,
Fast-dLLM, dParallel-style, d3LLM with and without its cache) and the AR model with `ar`
(greedy, KV cache), on the same held-out test problems.
"""

from __future__ import annotations

from collections.abc import Callable

from d3llm.decode import PRESETS, preset
from d3llm.errors import D3llmError
from d3llm.eval.runner import EvalResult, evaluate
from d3llm.models import bundled_models, load_model
from d3llm.tasks import TASK_NAMES, get_task


DIFFUSION_METHODS = tuple(name for name in PRESETS if name != "ar")


def run_demo(n: int = 20, seed: int = 0, progress: Callable[[str], None] | None = None) -> list[EvalResult]:
    names = list(bundled_models())
    if not names:
        raise D3llmError("no bundled models are installed (train them: see README, 'Bundled models')")
    results = []
    for name in names:
        lm = load_model(name)
        methods = DIFFUSION_METHODS if lm.facts.is_diffusion else ("ar",)
        for task in TASK_NAMES:
            for method in methods:
                if progress:
                    progress(f"{name} / {task} / {method}")
                results.append(evaluate(lm, get_task(task), preset(method), n=n, seed=seed))
    return results
