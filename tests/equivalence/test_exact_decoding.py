"""`d3llm-exact` on every bundled block model and every task: token for token the greedy causal
decode of the same network (`ar` on it as an AR model, one prompt at a time), alone and in
batches of prompts of different lengths, in a fraction of its forwards.

Float32 on the CPU (the default there): a causal argmax computed in a forward of 10-16 columns
differs from the reference's one-column forwards by float rounding only (under 1e-5 in the
logits on these models), while the closest top-two logits along these decodes are 4e-3 apart
(docs/block-diffusion.md, "Exact decoding")."""

from __future__ import annotations

import functools

import pytest

from d3llm.decode import generate, preset
from d3llm.models import bundled_models, load_model
from d3llm.models.catalog import describe
from d3llm.models.tokenizer import prompt_ids
from d3llm.tasks import get_task
from tests.unit.test_block import as_ar

SAMPLE = 24  # test problems per (model, task)
BATCH = 8
BLOCK_MODELS = sorted(name for name, path in bundled_models().items() if describe(path, name).family == "block")
# Tokens per forward it reaches on this sample (measured 4.4-4.9); the causal decode makes 1.
TPF_FLOOR = 4.0


@functools.cache
def loaded(name: str):
    return load_model(name)


def test_the_bundled_block_models_are_checked():
    assert BLOCK_MODELS == ["tiny-block", "tiny-block-d3llm"]


@pytest.mark.parametrize("task", ["arith", "arith-long", "code"])
@pytest.mark.parametrize("name", BLOCK_MODELS)
def test_exact_decoding_is_the_causal_decode(name, task):
    lm = loaded(name)
    pad = lm.tokenizer.pad_token_id
    prompts = [prompt_ids(lm.tokenizer, p.prompt) for p in get_task(task).problems("test", SAMPLE, seed=0)]
    causal = as_ar(lm.model)
    reference = [generate(causal, [prompt], preset("ar"), pad) for prompt in prompts]
    config = preset("d3llm-exact")
    alone = [generate(lm.model, [prompt], config, pad) for prompt in prompts]
    batches = [generate(lm.model, prompts[i : i + BATCH], config, pad) for i in range(0, SAMPLE, BATCH)]
    batched = [(seq, n) for out in batches for seq, n in zip(out.sequences, out.num_tokens)]
    for i, ref in enumerate(reference):
        expected = (ref.sequences[0], ref.num_tokens[0])
        assert (alone[i].sequences[0], alone[i].num_tokens[0]) == expected, (name, task, i)
        assert batched[i] == expected, (name, task, i)
    tokens = sum(out.num_tokens[0] for out in alone)
    assert tokens / sum(out.nfe for out in alone) >= TPF_FLOOR
    assert all(len({len(p) for p in prompts[i : i + BATCH]}) > 1 for i in range(0, SAMPLE, BATCH))  # left padding
