"""The cases on which our decoders are compared with the authors' (make_fixtures.py runs theirs,
test_official_decoders.py ours): which model, which official function with which arguments, which
of our presets is its counterpart, and the prompts.

Models: the bundled checkpoints (shipped with the package), and `scripted-*`, a model whose
logits are a fixed table per position (`Scripted`), built so that an EOS is committed while
masks remain on both sides of it: the early-stop rules (what is overwritten, which columns stay
candidates) decide its output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

import torch

from d3llm import load_model
from d3llm.models.lm import LMOutput, ModelFacts
from d3llm.models.tokenizer import prompt_ids
from d3llm.tasks import get_task


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # a bundled model, or "scripted-llada" / "scripted-dream"
    official: str  # the authors' function
    method: str  # our preset that must reproduce it
    block_size: int
    max_new_tokens: int = 64
    threshold: float = 0.5
    block_add_threshold: float = 0.1
    block_activate_threshold: float = 0.95
    tasks: dict[str, int] = field(default_factory=dict)  # task -> prompts (test split, PROMPT_SEED)
    tokens_per_step: int | None = None  # Fast-dLLM: a fixed number per step instead of the threshold
    cache_delay: int = 1  # generate_multi_block_kv_cache's cache_delay_iter
    refresh_interval: int | None = None  # and its refresh_interval (None: their 10000, never)

    def settings(self) -> dict:
        """Our overrides of `method` that give the official function's arguments."""
        shared = dict(max_new_tokens=self.max_new_tokens, block_size=self.block_size)
        if self.official in FAST_DLLM:
            fixed = dict(strategy="topk", tokens_per_step=self.tokens_per_step)
            return {**shared, **(fixed if self.tokens_per_step else dict(threshold=self.threshold))}
        multi_block = dict(shared, threshold=self.threshold, block_add_threshold=self.block_add_threshold,
                           block_activate_threshold=self.block_activate_threshold)
        if self.official == LLADA_CACHED:
            return dict(multi_block, cache_delay=self.cache_delay, refresh_interval=self.refresh_interval)
        return multi_block


PROMPT_SEED = 11  # not the evaluation seed: these prompts only exercise the decoders
LLADA_MULTI_BLOCK = "generate_multi_block"
DREAM_MULTI_BLOCK = "DreamGenerationMixin._sample_multi_block"
LLADA_CACHED = "generate_multi_block_kv_cache"
FAST_DLLM = ("generate_with_prefix_cache", "generate_with_dual_cache")  # NVlabs/Fast-dLLM llada/generate.py
MIXED_TASKS = {"arith": 17, "arith-long": 17, "code": 16}
FEWER_TASKS = {"arith": 7, "arith-long": 7, "code": 6}

CASES = [
    Case("tiny-d3llm/d3llm", "tiny-d3llm", LLADA_MULTI_BLOCK, "d3llm", block_size=16, tasks=MIXED_TASKS),
    Case("tiny-teacher/d3llm", "tiny-teacher", LLADA_MULTI_BLOCK, "d3llm", block_size=8, tasks=MIXED_TASKS),
    Case("tiny-dream/d3llm", "tiny-dream", DREAM_MULTI_BLOCK, "d3llm", block_size=8,
         tasks={"arith": 9, "arith-long": 8, "code": 8}),
    Case("scripted-llada/d3llm", "scripted-llada", LLADA_MULTI_BLOCK, "d3llm", block_size=4, max_new_tokens=16),
    Case("scripted-dream/d3llm", "scripted-dream", DREAM_MULTI_BLOCK, "d3llm", block_size=4, max_new_tokens=16),
    Case("tiny-d3llm/d3llm-cache", "tiny-d3llm", LLADA_CACHED, "d3llm-cache", block_size=16, tasks=FEWER_TASKS),
    Case("tiny-teacher/d3llm-cache", "tiny-teacher", LLADA_CACHED, "d3llm-cache", block_size=8, tasks=FEWER_TASKS),
    Case("tiny-teacher/d3llm-cache delay 2 refresh 3", "tiny-teacher", LLADA_CACHED, "d3llm-cache", block_size=8,
         cache_delay=2, refresh_interval=3, tasks=FEWER_TASKS),
    Case("tiny-teacher/fast-dllm", "tiny-teacher", FAST_DLLM[0], "fast-dllm", block_size=8, threshold=0.9,
         tasks=FEWER_TASKS),
    Case("tiny-teacher/fast-dllm-dual", "tiny-teacher", FAST_DLLM[1], "fast-dllm-dual", block_size=8, threshold=0.9,
         tasks=FEWER_TASKS),
    Case("tiny-d3llm/fast-dllm k=2", "tiny-d3llm", FAST_DLLM[0], "fast-dllm", block_size=16, tokens_per_step=2,
         tasks=FEWER_TASKS),
    Case("tiny-d3llm/fast-dllm-dual k=2", "tiny-d3llm", FAST_DLLM[1], "fast-dllm-dual", block_size=16,
         tokens_per_step=2, tasks=FEWER_TASKS),
]


class Scripted(torch.nn.Module):
    """Logits from a fixed table per canvas position, plus one rule that reads the input: a
    column whose left neighbour is EOS predicts EOS with near-certainty. With the prompt of 3
    tokens and 16 response columns in blocks of 4 the official loops then go:

    - iteration 0: block 0 (columns 0-3, confident) is committed whole;
    - iteration 1: block 1 is created; column 5 (EOS) and column 7 (always confident) are
      committed, columns 4 and 6 are uncertain;
    - iteration 2: early stop writes EOS over columns 6-15, the committed column 7 included;
      columns 6 and 8-15 are still candidates (read before the fill) and now confident, so the
      current block (1) "commits" column 6 and column 4 is not forced: a forward without progress;
    - iteration 3: column 4 is forced.

    So the response, the forwards and both families' selection rules depend on the early-stop
    order; the old rules (only masks filled, no stale candidates) give other answers.
    """

    PROMPT = [5, 6, 7]
    VOCAB = 16
    EOS, MASK = 1, 2

    def __init__(self, family: str):
        super().__init__()
        self.facts = ModelFacts(family, mask_token_id=self.MASK, eos_token_id=self.EOS, max_length=64)
        g = torch.Generator().manual_seed(5)
        start = len(self.PROMPT)
        table = 0.3 * torch.randn(start + 16, self.VOCAB, generator=g)  # uncertain: ~2.7 nats
        for column in (0, 1, 2, 3, 7):
            table[start + column, 3 + column] += 8.0  # confident
        table[start + 5, self.EOS] += 30.0
        self.table = table
        self.device = torch.device("cpu")
        self.config = None

    def aligned(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, V): logits[:, p] predicts the token at position p."""
        n = input_ids.shape[1]
        logits = self.table[:n].expand(input_ids.shape[0], -1, -1).clone()
        after_eos = torch.zeros_like(input_ids, dtype=torch.bool)
        after_eos[:, 1:] = input_ids[:, :-1] == self.EOS
        logits[..., self.EOS] += 12.0 * after_eos
        return logits

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0, **_):
        logits = self.aligned(input_ids)
        return LMOutput(logits[:, -logits_to_keep:] if logits_to_keep else logits, None, None)

    def net(self, input_ids):
        """The Dream network's raw output, which the authors' Dream loop shifts itself: raw[p]
        predicts the token at p + 1 (the last position's is never read)."""
        aligned = self.aligned(input_ids)
        return LMOutput(torch.cat([aligned[:, 1:], aligned[:, -1:]], 1), None, None)


@cache
def _loaded(name: str):
    return load_model(name, dtype="float32", device="cpu")


@cache
def case_model(name: str):
    """The model of a case, as the decoders call it (loaded once per process)."""
    if name.startswith("scripted-"):
        return Scripted(name.removeprefix("scripted-"))
    return _loaded(name).model


def case_prompts(case: Case) -> list[list[int]]:
    if case.model.startswith("scripted-"):
        return [Scripted.PROMPT]
    loaded = _loaded(case.model)
    return [prompt_ids(loaded.tokenizer, problem.prompt)
            for task, n in case.tasks.items() for problem in get_task(task).problems("test", n, seed=PROMPT_SEED)]
