"""The block-diffusion family: mask, objective and decoding equal what they must by construction.

- with blocks of one token a block model *is* its AR network: same logits, same loss, same
  greedy decode;
- the exact block cache decodes what the uncached forward decodes, for every block preset;
- a batch of prompts of different lengths decodes what each prompt decodes alone.
"""

from __future__ import annotations

import copy

import pytest
import torch

from d3llm.decode import preset
from d3llm.decode.config import DecodeSettingError, resolve_config
from d3llm.decode.loop import generate
from d3llm.errors import D3llmError
from d3llm.models import DiffusionLM
from d3llm.models.block import block_causal_mask, block_ids
from d3llm.models.lm import ModelFacts
from d3llm.train.config import TrainConfig
from d3llm.train.objectives import DiffusionObjective, block_diffusion_loss, next_token_loss, sample_mask_ratio
from d3llm.train.trainer import network_for
from tests.conftest import save_toy_model, toy_model

BLOCK_METHODS = ("block", "fast-dllm-v2", "d3llm-block")
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]]


def as_ar(model: DiffusionLM) -> DiffusionLM:
    """The same weights as a causal AR model."""
    net = copy.deepcopy(model.net)
    net.config.is_causal = True
    return DiffusionLM(net, ModelFacts("ar", None, model.facts.eos_token_id, model.facts.max_length))


def a_batch(rows: int = 3, width: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded examples with different prompt and response lengths, each ending in EOS."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 60, (rows, width), generator=g)
    lengths = torch.tensor([width, width - 5, width - 2])[:rows]
    attention = (torch.arange(width) < lengths.unsqueeze(1)).long()
    ids[torch.arange(rows), lengths - 1] = 1
    return {"input_ids": ids * attention, "attention_mask": attention, "prompt_len": torch.tensor([5, 8, 3])[:rows]}


def test_block_ids_make_the_prompt_causal_and_the_response_blockwise():
    assert block_ids(9, start=3, block_size=4).tolist() == [-3, -2, -1, 0, 0, 0, 0, 1, 1]
    ids = block_ids(5, start=1, block_size=2)  # [-1, 0, 0, 1, 1]
    mask = block_causal_mask(ids, ids, torch.tensor([[0, 1, 1, 1, 1]]))[0, 0]
    assert mask[1].tolist() == [False, True, True, False, False]  # a block sees itself, not the next
    assert mask[3].tolist() == [False, True, True, True, True]
    assert mask[0, 0]  # a padding query still sees itself (no empty softmax row)


def test_blocks_of_one_token_are_the_ar_model():
    model = toy_model("block", block_size=1)
    ar = as_ar(model)
    batch = a_batch()
    logits = model(batch["input_ids"], batch["attention_mask"], block_start=4).logits
    real = batch["attention_mask"].bool()  # padding columns differ (they see only themselves)
    assert torch.allclose(logits[real], ar(batch["input_ids"], batch["attention_mask"]).logits[real], atol=1e-5)
    loss = block_diffusion_loss(model, batch, torch.Generator().manual_seed(0))
    assert torch.allclose(loss, next_token_loss(ar, batch), atol=1e-5)
    config = preset("block", max_new_tokens=12)
    assert generate(model, PROMPTS, config, 0).sequences == generate(ar, PROMPTS, preset("ar", max_new_tokens=12),
                                                                     0).sequences


def test_the_loss_predicts_each_response_token_once_and_trains():
    model = toy_model("block", block_size=4)
    batch = a_batch()
    losses = [block_diffusion_loss(model, batch, torch.Generator().manual_seed(s)) for s in range(2)]
    assert all(torch.isfinite(x) for x in losses) and losses[0] != losses[1]  # the masks differ
    losses[0].backward()
    assert model.net.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("block_size", [3, 4])
@pytest.mark.parametrize("method", BLOCK_METHODS)
def test_the_block_cache_is_exact_and_a_batch_decodes_as_its_rows_alone(method, block_size):
    model = toy_model("block", seed=block_size, block_size=block_size)
    config = preset(method, max_new_tokens=13)  # the last block is shorter
    cached = generate(model, PROMPTS, config, 0)
    uncached = generate(model, PROMPTS, config.override(cache="none"), 0)
    assert cached.sequences == uncached.sequences and cached.num_tokens == uncached.num_tokens
    # block-causal: the blocks after the current one change nothing, so leaving them out is exact
    short = generate(model, PROMPTS, config.override(cache="none", future_masks="skip"), 0)
    assert short.sequences == uncached.sequences and short.num_tokens == uncached.num_tokens
    assert short.profile["full"][1] < uncached.profile["full"][1]  # fewer columns forwarded
    alone = [generate(model, [p], config, 0) for p in PROMPTS]
    assert cached.sequences == [out.sequences[0] for out in alone]
    assert cached.row_forwards == [out.row_forwards[0] for out in alone]


def test_a_permissive_threshold_commits_whole_blocks_exactly():
    model = toy_model("block", seed=1, block_size=4)
    config = preset("d3llm-block", max_new_tokens=16, threshold=10.0)  # every position passes
    out = generate(model, PROMPTS, config, 0)
    assert out.row_forwards == [4, 4, 4]  # one forward per block
    assert out.sequences == generate(model, PROMPTS, config.override(cache="none"), 0).sequences


def test_the_mask_token_is_never_committed():
    model = toy_model("block", block_size=4)
    with torch.no_grad():
        model.net.lm_head.bias = None
        model.net.lm_head.weight[model.facts.mask_token_id] += 100.0  # the mask is everyone's argmax
    out = generate(model, PROMPTS, preset("block", max_new_tokens=8), 0)
    assert all(model.facts.mask_token_id not in row for row in out.response.tolist())


def test_methods_and_families_must_match():
    block, llada = toy_model("block", block_size=4), toy_model("llada")
    with pytest.raises(DecodeSettingError, match="block-diffusion models only"):
        generate(llada, PROMPTS, preset("fast-dllm-v2"), 0)
    with pytest.raises(DecodeSettingError, match="trained with blocks of 4") as info:
        generate(block, PROMPTS, preset("vanilla", block_size=32), 0)
    assert info.value.setting == "block_size"
    with pytest.raises(DecodeSettingError, match="not 'fast-dllm' with cache 'prefix'") as info:
        generate(block, PROMPTS, preset("fast-dllm"), 0)
    assert info.value.setting == "method"
    with pytest.raises(DecodeSettingError, match="not 'block' with cache 'delayed'") as info:
        generate(block, PROMPTS, preset("block", cache="delayed"), 0)
    assert info.value.setting == "cache"
    with pytest.raises(DecodeSettingError, match="one after the other"):
        generate(block, PROMPTS, preset("block", block_add_threshold=0.5), 0)
    assert resolve_config(None, "block").method == "d3llm-block"


def test_a_block_recipe_needs_its_block_size_and_the_token_mean(tiny_tokenizer):
    token_mean = DiffusionObjective(weighting="token_mean")
    with pytest.raises(D3llmError, match="a new block model needs `block_size`"):
        network_for(TrainConfig(family="block", objective=token_mean), tiny_tokenizer)
    assert network_for(TrainConfig(family="block", block_size=4, objective=token_mean),
                       tiny_tokenizer).config.d3llm_block_size == 4
    for bad in (dict(family="llada", block_size=8), dict(family="block", block_size=0, objective=token_mean)):
        with pytest.raises(D3llmError, match="`block_size` must be a positive integer for family block"):
            TrainConfig(**bad)
    with pytest.raises(D3llmError, match="token_mean"):
        TrainConfig(family="block", block_size=8)


def test_the_loss_sees_each_block_as_the_decoder_does():
    """The loss's prediction of every masked token equals the decoder's forward over the canvas
    [prompt, earlier blocks clean, this block as noised, later blocks masked]."""
    k, model, batch = 3, toy_model("block", block_size=3), a_batch()
    loss = block_diffusion_loss(model, batch, torch.Generator().manual_seed(5))
    generator = torch.Generator().manual_seed(5)  # the same draws as the loss: t, then the mask
    lengths, prompts = batch["attention_mask"].sum(1).tolist(), batch["prompt_len"].tolist()
    whole = [-(-(n - p) // k) * k for n, p in zip(lengths, prompts)]
    t = sample_mask_ratio(DiffusionObjective(weighting="token_mean"), 3, generator)
    draws = torch.rand((3, max(whole)), generator=generator)
    mask, total, count = model.facts.mask_token_id, 0.0, 0
    for row, (p, n, w) in enumerate(zip(prompts, lengths, whole)):
        prompt = batch["input_ids"][row, :p].tolist()
        response = batch["input_ids"][row, p:n].tolist() + [1] * (w - (n - p))  # EOS to whole blocks
        in_a = (draws[row, :w] < t[row]).tolist()
        for hidden in (in_a, [not a for a in in_a]):  # copy A, then its complement
            for b in range(0, w, k):
                block = [mask if hidden[j] else response[j] for j in range(b, b + k)]
                canvas = torch.tensor([prompt + response[:b] + block + [mask] * (w - b - k)])
                logits = model(canvas, block_start=p).logits[0]
                for j in (j for j in range(b, b + k) if hidden[j]):
                    total += torch.nn.functional.cross_entropy(logits[p + j], torch.tensor(response[j])).item()
                    count += 1
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_the_profile_counts_every_forward_by_kind():
    model = toy_model("block", seed=1, block_size=4)
    out = generate(model, PROMPTS, preset("d3llm-block", max_new_tokens=16, threshold=10.0), 0)
    (full_calls, full_columns, _), (window_calls, window_columns, _) = out.profile["full"], out.profile["window"]
    assert full_calls == 1 and full_calls + window_calls == out.nfe  # the prompt once, then windows
    assert full_columns == 3 * (11 + 4)  # three rows: the longest prompt (11) and the first block
    assert window_columns == 3 * (4 + 4) * 3  # each later forward: the finished block and the next one


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_a_block_model_starts_a_bidirectional_dllm(tmp_path, tiny_tokenizer, family):
    """`init_from` a block model (tiny-dream's recipe): the same weights, full attention, no
    blocks left in the config; the Dream network keeps the shift and so the block model's
    prediction wherever the block model sees everything (the last column, one layer)."""
    block = toy_model("block", block_size=4, num_layers=1, vocab_size=len(tiny_tokenizer))
    block.save_pretrained(tmp_path / "block")
    net = network_for(TrainConfig(family=family, init_from=str(tmp_path / "block")), tiny_tokenizer)
    model = DiffusionLM(net.eval())
    assert model.facts.family == family and not hasattr(net.config, "d3llm_block_size")
    x = torch.randint(3, len(tiny_tokenizer), (2, 9))
    if family == "dream":
        torch.testing.assert_close(model(x).last_logits, block(x, block_start=5).last_logits, atol=1e-5, rtol=1e-5)


def test_training_drops_the_decode_block_size_its_start_was_exported_with(tmp_path, tiny_tokenizer):
    """A stored decode block size was measured on the old weights: the trained model starts without
    one (and so decodes with the presets' 32 until it is exported with its own)."""
    from d3llm.models.checkpoint import export_model

    save_toy_model(tmp_path / "llada", tiny_tokenizer, "llada")
    exported = export_model(tmp_path / "llada", tmp_path / "b8", decode_block_size=8)
    net = network_for(TrainConfig(family="llada", init_from=str(exported)), tiny_tokenizer)
    assert not hasattr(net.config, "d3llm_decode_block_size")
    assert DiffusionLM(net).facts.decode_block_size is None
