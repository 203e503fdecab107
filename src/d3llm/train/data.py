"""Training examples from tasks: chat-formatted prompt ids + response ids.

An example is `{"input_ids": prompt + response, "prompt_len": P, "length": L}`.
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
from d3llm.models.tokenizer import prompt_ids
from d3llm.tasks import Problem, get_task


def encode_example(
    tokenizer: PreTrainedTokenizerBase, problem: Problem, gen_length: int | None
) -> dict:
    prompt = prompt_ids(tokenizer, problem.prompt)
    response = tokenizer(problem.target, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    if gen_length is not None:
        if len(response) > gen_length:
            raise D3llmError(
                f"a {problem.task} response has {len(response)} tokens, more than `gen_length`={gen_length}"
            )
        response = response + [tokenizer.eos_token_id] * (gen_length - len(response))
    ids = prompt + response
    return {"input_ids": ids, "prompt_len": len(prompt), "length": len(ids)}


def build_examples(
    tokenizer: PreTrainedTokenizerBase,
    mixture: Mapping[str, float],
    n: int,
    split: str,
    seed: int,
    gen_length: int | None,
) -> list[dict]:
    """`n` examples drawn from the tasks of `mixture` (task -> weight), shuffled by seed."""
    total = sum(mixture.values())
    if not mixture or total <= 0:
        raise D3llmError("the task mixture is empty; give at least one task with a positive weight")
    examples = []
    for name, weight in mixture.items():
        count = round(n * weight / total)
        problems = get_task(name).problems(split, count, seed)
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
