"""Training examples from tasks: chat-formatted prompt ids + response ids.

An example is `{"input_ids": prompt + response, "prompt_len": P, "length": L}`
(`d3llm.models.tokenizer.encode_example`, which teacher rollouts share).
For diffusion families the response is `target + EOS` padded with EOS up to `gen_length`
tokens, as in LLaDA's SFT: the model learns to fill the rest of a canvas with EOS, which is
what lets decoding stop early. For the AR family the response is `target + EOS`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import torch
from transformers import PreTrainedTokenizerBase

from d3llm.errors import D3llmError
from d3llm.models.tokenizer import encode_example
from d3llm.tasks import get_task


def build_examples(
    tokenizer: PreTrainedTokenizerBase,
    mixture: Mapping[str, float],
    n: int,
    split: str,
    seed: int,
    gen_length: int | None,
    distinct: bool = True,
) -> list[dict]:
    """`n` examples drawn from the tasks of `mixture` (task -> weight), shuffled by seed; each a
    different problem (`distinct`), or drawn as the task draws them, repeats allowed."""
    total = sum(mixture.values())
    if not mixture or total <= 0:
        raise D3llmError("the task mixture is empty; give at least one task with a positive weight")
    examples = []
    for name, weight in mixture.items():
        count = round(n * weight / total)
        task = get_task(name)
        problems = task.problems(split, count, seed) if distinct else task.draws(split, count, seed)
        examples += [encode_example(tokenizer, p, gen_length) for p in problems]
    random.Random(seed).shuffle(examples)
    return examples


def collate(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into tensors (B, L)."""
    width = max(len(ex["input_ids"]) for ex in batch)
    ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ex in enumerate(batch):
        ids[row, : len(ex["input_ids"])] = torch.tensor(ex["input_ids"])
        attention[row, : len(ex["input_ids"])] = 1
    prompt_len = torch.tensor([ex["prompt_len"] for ex in batch])
    return {"input_ids": ids, "attention_mask": attention, "prompt_len": prompt_len}
