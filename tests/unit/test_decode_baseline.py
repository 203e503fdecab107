"""The baseline decoders (vanilla LLaDA, greedy AR) and DecodeConfig validation."""

import pytest
import torch

from d3llm.decode import DecodeConfig, generate, preset
from d3llm.errors import D3llmError
from tests.conftest import VOCAB, toy_model

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14]]


def test_config_validation():
    with pytest.raises(D3llmError, match="`block_size` must be a positive integer, got 0"):
        DecodeConfig(block_size=0)
    with pytest.raises(D3llmError, match="`max_new_tokens` must be a positive integer"):
        preset("vanilla", max_new_tokens=-1)
    with pytest.raises(D3llmError, match="unknown method 'fast' ; choose one of".replace(" ;", ";")):
        preset("fast")
    with pytest.raises(D3llmError, match=r"unknown decode setting\(s\) \['thresold'\]"):
        preset("vanilla", thresold=0.5)
    with pytest.raises(D3llmError, match="temperature"):
        preset("vanilla", temperature=-1.0)


def test_vanilla_commits_one_token_per_forward():
    model = toy_model("llada")
    out = generate(model, PROMPTS, preset("vanilla", max_new_tokens=12, block_size=4), pad_token_id=0)
    assert out.nfe == 12
    assert all(2 not in seq for seq in out.sequences)  # no mask token left
    four = generate(model, PROMPTS, preset("vanilla", max_new_tokens=12, block_size=4, tokens_per_step=4), 0)
    assert four.nfe == 3


def test_vanilla_length_not_a_multiple_of_the_block():
    model = toy_model("llada")
    out = generate(model, PROMPTS, preset("vanilla", max_new_tokens=10, block_size=4, tokens_per_step=3), 0)
    assert out.nfe == 2 + 2 + 1  # blocks of 4, 4, 2
    assert all(len(s) <= 10 for s in out.sequences)


@pytest.mark.parametrize("family, method", [("llada", "vanilla"), ("dream", "vanilla"), ("ar", "ar")])
def test_batch_equals_one_by_one(family, method):
    model = toy_model(family)
    config = preset(method, max_new_tokens=8, block_size=4)
    batch = generate(model, PROMPTS, config, pad_token_id=0)
    for i, prompt in enumerate(PROMPTS):
        single = generate(model, [prompt], config, pad_token_id=0)
        assert single.sequences[0] == batch.sequences[i]
        assert single.num_tokens[0] == batch.num_tokens[i]


def test_ar_with_cache_equals_greedy_without_cache():
    model = toy_model("ar", seed=1)
    prompt = [5, 6, 7, 8]
    out = generate(model, [prompt], preset("ar", max_new_tokens=10), pad_token_id=0)
    ids = torch.tensor([prompt])
    reference = []
    for _ in range(10):
        token = model.net(ids).logits[0, -1].argmax().item()
        reference.append(token)
        if token == model.facts.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], 1)
    assert out.sequences[0] + ([1] if out.num_tokens[0] > len(out.sequences[0]) else []) == reference


def test_ar_streams_one_final_token_per_forward():
    from d3llm.decode import final_prefix_lengths

    model = toy_model("ar", seed=1)
    seen = []
    out = generate(model, PROMPTS, preset("ar", max_new_tokens=10), pad_token_id=0,
                   on_step=lambda state: seen.append(final_prefix_lengths(state).tolist()))
    assert len(seen) == out.nfe
    for step, lengths in enumerate(seen, start=1):  # one more token per step until the row's EOS
        assert lengths == [min(step, n) for n in out.num_tokens]
    assert out.row_forwards == out.num_tokens and out.trace[0, : out.num_tokens[0]].tolist() == list(
        range(out.num_tokens[0]))


def test_counts_stop_at_the_first_eos():
    model = toy_model("llada")
    head = torch.nn.Linear(model.config.hidden_size, VOCAB)
    with torch.no_grad():  # make EOS (id 1) the only sensible prediction
        head.weight.zero_()
        head.bias.zero_()
        head.bias[1] = 10.0
    model.net.lm_head = head
    out = generate(model, PROMPTS, preset("vanilla", max_new_tokens=8, block_size=8), pad_token_id=0)
    assert out.num_tokens == [1, 1, 1] and out.sequences == [[], [], []]
    assert out.row_forwards == [8, 8, 8] and out.tokens_per_forward == pytest.approx(3 / 24)


def test_wrong_method_for_the_family():
    with pytest.raises(D3llmError, match="needs an autoregressive model"):
        generate(toy_model("llada"), PROMPTS, preset("ar"), 0)
    with pytest.raises(D3llmError, match="needs a diffusion model"):
        generate(toy_model("ar"), PROMPTS, preset("vanilla"), 0)
    with pytest.raises(D3llmError, match="at least one token"):
        generate(toy_model("llada"), [[]], preset("vanilla"), 0)
