"""Official block-diffusion layouts (docs/checkpoint-layouts.md, section 5).

A Fast-dLLM v2 folder (config.json with model_type "Fast_dLLM_Qwen" and `bd_size`, safetensors
with Qwen2 tensor names) loads by path as a `block` model on a stock Qwen2 network, with every
weight in place: its logits equal those of the same weights in a network built directly. SDAR
folders and malformed configs are refused with an error that names the cause.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from d3llm.errors import ModelLoadError
from d3llm.models import DiffusionLM, load_model
from d3llm.models.layouts import FAST_DLLM_V2_BLOCK_SIZE, FAST_DLLM_V2_MASK_TOKEN_ID, fast_dllm_v2_config
from d3llm.models.lm import ModelFacts, network_class

LAYERS, BLOCK = 2, 4
DROP = object()  # a key to leave out of config.json
SHAPE = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=LAYERS, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-6)


def official_config(tokenizer, *, tied: bool = False, **changes) -> dict:
    """config.json as Fast_dLLM_QwenConfig writes it (NVlabs/Fast-dLLM v2/configuration.py), at toy
    size. The public checkpoints carry no mask id; ours names the toy tokenizer's mask token."""
    raw = {
        "architectures": ["Fast_dLLM_QwenForCausalLM"],
        "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig",
                     "AutoModel": "modeling.Fast_dLLM_QwenModel",
                     "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
        "model_type": "Fast_dLLM_Qwen", "bd_size": BLOCK,
        "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02,
        "layer_types": ["full_attention"] * LAYERS, "max_window_layers": LAYERS,
        "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None, "use_sliding_window": False,
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16", "transformers_version": "4.53.1",
        "use_cache": True, "vocab_size": len(tokenizer), **SHAPE,
        "bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "mask_token_id": tokenizer.mask_token_id,
    }
    raw.update(changes)
    return {k: v for k, v in raw.items() if v is not DROP}


def official_names(tied: bool) -> set[str]:
    """The tensors of a Fast_dLLM_QwenForCausalLM (q/k/v with bias, o_proj without; no lm_head when tied)."""
    names = {"model.embed_tokens.weight", "model.norm.weight"} | ({"lm_head.weight"} if not tied else set())
    for n in range(LAYERS):
        layer = f"model.layers.{n}"
        names |= {f"{layer}.self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")}
        names |= {f"{layer}.self_attn.o_proj.weight", f"{layer}.input_layernorm.weight",
                  f"{layer}.post_attention_layernorm.weight"}
        names |= {f"{layer}.mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    return names


def reference_network(tokenizer, tied: bool, seed: int = 0) -> Qwen2ForCausalLM:
    """A stock causal Qwen2 network with random weights (norms and biases too, so none is trivial)."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), tie_word_embeddings=tied,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, **SHAPE)
    net = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
        net.lm_head.weight.mul_(25)  # sharp predictions: a wrong weight shows as a large difference
    return net


def write_official_folder(folder, tokenizer, net, raw: dict, shards: int = 1):
    """config.json + safetensors (one file, or shards + index) under the official tensor names."""
    folder.mkdir(parents=True)
    tied = raw["tie_word_embeddings"]
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    assert set(state) == official_names(tied)
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    if shards == 1:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(state)
        weight_map = {}
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = names[i::shards]
            save_file({n: state[n] for n in part}, str(folder / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("tied, shards", [(False, 2), (True, 1)], ids=["7B-like-untied-sharded", "1.5B-like-tied"])
def test_fast_dllm_v2_folder_loads_as_a_block_model_with_every_weight(tmp_path, tiny_tokenizer, tied, shards):
    reference = reference_network(tiny_tokenizer, tied)
    folder = write_official_folder(tmp_path / "fast_dllm_v2", tiny_tokenizer, reference,
                                   official_config(tiny_tokenizer, tied=tied), shards=shards)
    lm = load_model(folder, dtype=torch.float32, device="cpu")
    assert lm.facts.family == "block" and lm.facts.block_size == BLOCK and lm.facts.logit_shift == 1
    assert lm.facts.mask_token_id == tiny_tokenizer.mask_token_id
    assert type(lm.model.net) is Qwen2ForCausalLM
    assert lm.model.config.tie_word_embeddings is tied

    assert lm.facts.block_alignment == "absolute"  # the official convention: blocks of positions from 0

    x = torch.randint(3, len(tiny_tokenizer), (2, 2 * BLOCK + 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        causal = reference(x).logits  # the stock causal network: column i-1 predicts token i
        # The same as the reference weights under the same block-causal mask, prompt or not.
        facts = ModelFacts("block", tiny_tokenizer.mask_token_id, tiny_tokenizer.eos_token_id, 128, BLOCK,
                           block_alignment="absolute")
        blocks = lm.model(x).logits
        torch.testing.assert_close(blocks, DiffusionLM(reference, facts)(x).logits)
        # Blocks of positions from 0: a change at position 1 reaches position 0 (same block, the
        # prompt's too), a change at the start of block 2 reaches nothing before it.
        y = x.clone()
        y[:, 1] = (y[:, 1] + 1) % len(tiny_tokenizer)
        z = x.clone()
        z[:, 2 * BLOCK] = (z[:, 2 * BLOCK] + 1) % len(tiny_tokenizer)
        raw = lm.model.net(x, attention_mask=lm.model._block_mask(x, None, None, None)).logits
        raw_y = lm.model.net(y, attention_mask=lm.model._block_mask(y, None, None, None)).logits
        raw_z = lm.model.net(z, attention_mask=lm.model._block_mask(z, None, None, None)).logits
        assert not torch.allclose(raw_y[:, 0], raw[:, 0])
        torch.testing.assert_close(raw_z[:, : 2 * BLOCK], raw[:, : 2 * BLOCK])
        assert not torch.allclose(raw_z[:, 2 * BLOCK + 1], raw[:, 2 * BLOCK + 1])
    assert not torch.allclose(blocks[:, 1:], causal[:, :-1], atol=1e-3)  # the block mask is in effect


def test_a_loaded_fast_dllm_v2_model_saves_as_our_own_folder(tmp_path, tiny_tokenizer):
    reference = reference_network(tiny_tokenizer, tied=False)
    folder = write_official_folder(tmp_path / "official", tiny_tokenizer, reference, official_config(tiny_tokenizer))
    lm = load_model(folder, dtype=torch.float32, device="cpu")
    lm.model.save_pretrained(tmp_path / "ours")
    tiny_tokenizer.save_pretrained(tmp_path / "ours")
    again = load_model(tmp_path / "ours", dtype=torch.float32, device="cpu")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "qwen2"
    assert again.facts == lm.facts
    assert again.facts.block_alignment == "absolute"  # recorded in our config.json
    x = torch.randint(3, len(tiny_tokenizer), (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(again.model(x).logits, lm.model(x).logits)


def test_defaults_when_the_config_does_not_say():
    """The public configs carry `bd_size` but no mask id (their generate() hard-codes 151665)."""
    raw = {"model_type": "Fast_dLLM_Qwen", "vocab_size": 152064, "hidden_size": 3584, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944,
           "eos_token_id": 151645, "rope_theta": 1000000.0, "tie_word_embeddings": False}
    config = fast_dllm_v2_config(raw)
    assert config.d3llm_family == "block" and config.mask_token_id == FAST_DLLM_V2_MASK_TOKEN_ID == 151665
    assert config.d3llm_block_size == FAST_DLLM_V2_BLOCK_SIZE == 32
    assert network_class(config) is Qwen2ForCausalLM
    assert fast_dllm_v2_config({**raw, "bd_size": 16, "mask_token_id": 151666}).d3llm_block_size == 16
    assert fast_dllm_v2_config({**raw, "mask_token_id": 151666}).mask_token_id == 151666


@pytest.mark.parametrize("changes, message", [
    ({"bd_size": 0}, r"`bd_size` \(the block size\) must be a positive integer, got 0"),
    ({"bd_size": "32"}, r"`bd_size` .* got '32'"),
    ({"bd_size": True}, r"`bd_size` .* got True"),
    ({"hidden_size": DROP}, r"lacks the keys \['hidden_size'\]"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"unsupported Fast-dLLM v2 config: rope_scaling="),
    ({"use_sliding_window": True}, r"unsupported Fast-dLLM v2 config: use_sliding_window"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, r"unsupported Fast-dLLM v2 config: layer_types"),
])
def test_a_malformed_official_config_is_refused_by_name(tmp_path, tiny_tokenizer, changes, message):
    raw = official_config(tiny_tokenizer, **changes)
    folder = write_official_folder(tmp_path / "bad", tiny_tokenizer, reference_network(tiny_tokenizer, False), raw)
    with pytest.raises(ModelLoadError, match=message):
        load_model(folder, device="cpu")


def test_weights_that_lack_an_official_tensor_are_refused(tmp_path, tiny_tokenizer):
    """A bias missing from the file is an error, not a silently zero (or random) bias."""
    folder = write_official_folder(tmp_path / "m", tiny_tokenizer, reference_network(tiny_tokenizer, False),
                                   official_config(tiny_tokenizer))
    state = load_file(str(folder / "model.safetensors"))
    del state["model.layers.1.self_attn.k_proj.bias"]
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    missing = r"weights lack 1 tensors, e.g. \['model.layers.1.self_attn.k_proj.bias'\]"
    with pytest.raises(ModelLoadError, match=missing):
        load_model(folder, device="cpu")


def test_sdar_is_refused_with_the_reason(tmp_path, tiny_tokenizer):
    """SDAR (JetAstra/SDAR training/model/SDAR-4B-Chat/config.json): a Qwen3 network whose logits are
    not shifted; loading it as our `block` family would decode every token one column off."""
    folder = tmp_path / "sdar"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["SDARForCausalLM"], "model_type": "sdar", "block_size": 4, "mask_token_id": 151669,
        "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig",
                     "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
    }))
    refused = r"SDAR checkpoints \(model_type='sdar'\) are not supported yet.*logit shift"
    with pytest.raises(ModelLoadError, match=refused):
        load_model(folder, device="cpu")
