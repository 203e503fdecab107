"""Start a diffusion model from an AR model's weights.

- `ar_to_dream`: AR Llama -> Dream-style (Qwen2, bidirectional, shifted). Dream was
  initialised from the AR Qwen2.5; our tiny Dream starts from the tiny AR model the same way.
  Qwen2 is Llama plus q/k/v biases, so the weights carry over by name and the new biases start
  at zero: the network computes what the AR one did, except that attention is bidirectional.
- `ar_to_llada`: AR Llama -> LLaDA-style (the same Llama, bidirectional, no shift). The
  prediction of token i moves from position i-1 to position i, which fine-tuning learns fast.
- `ar_to_block`: AR Llama -> block diffusion (the same Llama and the same AR shift; attention
  becomes block-causal, `d3llm.models.block`). With blocks of one token it *is* the AR model.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM


def ar_to_dream(net: PreTrainedModel, mask_token_id: int) -> PreTrainedModel:
    c = net.config
    config = Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters=dict(c.rope_parameters),
        tie_word_embeddings=c.tie_word_embeddings, eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id, bos_token_id=None, is_causal=False,
        d3llm_family="dream", mask_token_id=mask_token_id,
    )
    dream = Qwen2ForCausalLM(config)
    missing, unexpected = dream.load_state_dict(net.state_dict(), strict=False)
    assert not unexpected and all(name.endswith("proj.bias") for name in missing), (missing, unexpected)
    with torch.no_grad():
        for name, param in dream.named_parameters():
            if name in missing:
                param.zero_()
    return dream


def ar_to_llada(net: PreTrainedModel, mask_token_id: int) -> PreTrainedModel:
    if hasattr(net.config, "d3llm_block_size"):  # from a block model: its blocks go
        del net.config.d3llm_block_size
    net.config.is_causal = False
    net.config.d3llm_family = "llada"
    net.config.mask_token_id = mask_token_id
    return net


def ar_to_block(net: PreTrainedModel, mask_token_id: int, block_size: int) -> PreTrainedModel:
    net.config.is_causal = False  # not causal: the block-causal mask comes with every forward
    net.config.d3llm_family = "block"
    net.config.mask_token_id = mask_token_id
    net.config.d3llm_block_size = block_size
    return net
