"""On-disk checkpoint layouts: ours, official LLaDA, official Dream, official Fast-dLLM v2.

A layout knows how to turn a folder's config.json into a transformers config for one of our
families, and how its tensor names map to transformers' names. Reading and writing the
weights themselves is shared (`d3llm.models.reading`, `d3llm.models.checkpoint`). See
docs/checkpoint-layouts.md for the official formats.

| layout         | recognised by                | network                | tensor names                   |
|----------------|------------------------------|------------------------|--------------------------------|
| `hf`           | model_type llama / qwen2     | as saved               | transformers' own              |
| `llada`        | model_type "llada"           | Llama                  | `model.transformer.blocks.N.*` |
| `dream`        | model_type "Dream"           | Qwen2                  | transformers' Qwen2 names      |
| `fast_dllm_v2` | model_type "Fast_dLLM_Qwen"  | Qwen2 (`block` family) | transformers' Qwen2 names      |

SDAR folders (model_type "sdar") are recognised and refused with the reason: their logits are
not shifted, which our `block` family assumes (docs/checkpoint-layouts.md, section 5).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

from d3llm.errors import ModelLoadError

# --- LLaDA ------------------------------------------------------------------------------

_LLADA_GLOBAL = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
_LLADA_BLOCK = {  # LLaDA block module -> Llama decoder-layer module
    "attn_norm": "input_layernorm",
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj",
    "ff_norm": "post_attention_layernorm",
    "ff_proj": "mlp.gate_proj",  # SiLU is applied to ff_proj: it is the gate
    "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj",  # the block's ff_out; the model's ff_out is the LM head
}
_LLADA_BLOCK_RE = re.compile(r"^model\.transformer\.blocks\.(\d+)\.(\w+)\.weight$")
_HF_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)\.weight$")

# Config values our Llama network reproduces exactly; anything else is refused by name. A key
# that config.json leaves out takes the official `ModelConfig` default (configuration_llada.py),
# which differs from the supported value for the first four: those must be written out.
_LLADA_REQUIRED = {
    "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu", "rope": True,
    "alibi": False, "input_emb_norm": False, "scale_logits": False, "attention_layer_norm": False,
    "include_bias": False, "include_qkv_bias": False, "block_group_size": 1,
}
_LLADA_OFFICIAL_DEFAULTS = {"block_type": "sequential", "layer_norm_type": "default (LayerNorm)",
                            "activation_type": "swiglu", "rope": False}
LLADA_MASK_TOKEN_ID = 126336  # `<|mdm_mask|>`, when the config does not say


def llada_name_to_hf(name: str) -> str | None:
    if name in _LLADA_GLOBAL:
        return _LLADA_GLOBAL[name]
    m = _LLADA_BLOCK_RE.match(name)
    if m and m.group(2) in _LLADA_BLOCK:
        return f"model.layers.{m.group(1)}.{_LLADA_BLOCK[m.group(2)]}.weight"
    return None


def hf_name_to_llada(name: str) -> str:
    inverse_global = {v: k for k, v in _LLADA_GLOBAL.items()}
    if name in inverse_global:
        return inverse_global[name]
    m = _HF_LAYER_RE.match(name)
    inverse_block = {v: k for k, v in _LLADA_BLOCK.items()}
    if not m or m.group(2) not in inverse_block:
        raise ValueError(f"{name} has no place in the LLaDA layout")
    return f"model.transformer.blocks.{m.group(1)}.{inverse_block[m.group(2)]}.weight"


def llada_config(raw: dict) -> PretrainedConfig:
    for key, want in _LLADA_REQUIRED.items():
        if key in raw and raw[key] != want:
            raise ModelLoadError(f"unsupported LLaDA config: {key}={raw[key]!r} (supported: {want!r})")
        if key not in raw and key in _LLADA_OFFICIAL_DEFAULTS:
            raise ModelLoadError(f"LLaDA config.json has no `{key}`: the official code then uses "
                                 f"{_LLADA_OFFICIAL_DEFAULTS[key]}, which d3llm does not support (write {key}={want!r} "
                                 "if the weights were trained with it)")
    try:
        d_model, n_heads = raw["d_model"], raw["n_heads"]
        n_kv = raw.get("n_kv_heads") or (1 if raw.get("multi_query_attention") else n_heads)
        return LlamaConfig(
            vocab_size=raw.get("embedding_size") or raw["vocab_size"],
            hidden_size=d_model,
            intermediate_size=raw.get("mlp_hidden_size") or raw.get("mlp_ratio", 4) * d_model,
            num_hidden_layers=raw["n_layers"],
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv,
            max_position_embeddings=raw.get("max_sequence_length", 1024),  # the official defaults, here on
            rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
            rope_parameters={"rope_type": "default", "rope_theta": raw.get("rope_theta", 10_000.0)},
            tie_word_embeddings=bool(raw.get("weight_tying", True)),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            bos_token_id=None,
            is_causal=False,
            d3llm_family="llada",
            mask_token_id=raw.get("mask_token_id", LLADA_MASK_TOKEN_ID),
        )
    except KeyError as exc:
        raise ModelLoadError(f"LLaDA config.json lacks the key {exc.args[0]!r}") from None


def llada_raw_config(config: PretrainedConfig) -> dict:
    """The config.json of the official LLaDA layout for one of our llada models."""
    return {
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu",
        "alibi": False, "alibi_bias_max": 8.0, "attention_dropout": 0.0,
        "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": config.hidden_size, "embedding_dropout": 0.0,
        "embedding_size": config.vocab_size, "vocab_size": config.vocab_size,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "mask_token_id": config.mask_token_id, "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "max_sequence_length": config.max_position_embeddings,
        "mlp_hidden_size": config.intermediate_size, "mlp_ratio": 4,
        "n_heads": config.num_attention_heads, "n_kv_heads": config.num_key_value_heads,
        "n_layers": config.num_hidden_layers, "precision": "amp_bf16", "residual_dropout": 0.0,
        "rms_norm_eps": config.rms_norm_eps, "rope": True, "rope_full_precision": True,
        "rope_theta": config.rope_parameters["rope_theta"], "scale_logits": False,
        "use_cache": False, "weight_tying": bool(config.tie_word_embeddings),
    }


# --- Dream ------------------------------------------------------------------------------

DREAM_MASK_TOKEN_ID = 151666  # `<|mask|>`, DreamConfig's default
_DREAM_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps",
    "tie_word_embeddings", "attention_dropout", "bos_token_id", "eos_token_id", "pad_token_id",
)


def dream_config(raw: dict) -> PretrainedConfig:
    if raw.get("use_sliding_window"):
        raise ModelLoadError("unsupported Dream config: use_sliding_window=true")
    if raw.get("rope_scaling"):
        raise ModelLoadError(f"unsupported Dream config: rope_scaling={raw['rope_scaling']!r}")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in raw]
    if missing:
        raise ModelLoadError(f"Dream config.json lacks the keys {missing}")
    kwargs = {k: raw[k] for k in _DREAM_KEYS if k in raw}
    return Qwen2Config(
        **kwargs,
        rope_parameters={"rope_type": "default", "rope_theta": raw.get("rope_theta", 10_000.0)},
        use_sliding_window=False,
        is_causal=False,
        d3llm_family="dream",
        mask_token_id=raw.get("mask_token_id", DREAM_MASK_TOKEN_ID),
    )


def dream_raw_config(config: PretrainedConfig) -> dict:
    """The config.json of the official Dream layout for one of our dream models."""
    raw = {k: getattr(config, k) for k in _DREAM_KEYS}
    raw.update(
        architectures=["DreamModel"], model_type="Dream",
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        rope_theta=config.rope_parameters["rope_theta"], rope_scaling=None,
        use_sliding_window=False, sliding_window=None, max_window_layers=config.num_hidden_layers,
        mask_token_id=config.mask_token_id, use_cache=False, torch_dtype="bfloat16", use_mrope=False,
    )
    return raw


# --- Fast-dLLM v2 (block diffusion on Qwen2.5) ----------------------------------------
# Efficient-Large-Model/Fast_dLLM_v2_{1.5B,7B}: a Qwen2 network under its own model_type,
# with the block size in `bd_size`. config.json has no mask id: the generation code hard-codes
# 151665, the `|<MASK>|` token the training code appends to the Qwen2.5 tokenizer.

FAST_DLLM_V2_MASK_TOKEN_ID = 151665  # `|<MASK>|`, when the config does not say
FAST_DLLM_V2_BLOCK_SIZE = 32  # Fast_dLLM_QwenConfig's default `bd_size`


def fast_dllm_v2_config(raw: dict) -> PretrainedConfig:
    def refuse(problem: str):
        raise ModelLoadError(f"unsupported Fast-dLLM v2 config: {problem}")

    if raw.get("use_sliding_window"):
        refuse("use_sliding_window=true")
    if raw.get("rope_scaling"):
        refuse(f"rope_scaling={raw['rope_scaling']!r}")
    layer_types = raw.get("layer_types") or []
    if any(t != "full_attention" for t in layer_types):
        refuse(f"layer_types={sorted(set(layer_types))!r} (supported: full_attention only)")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in raw]
    if missing:
        raise ModelLoadError(f"Fast-dLLM v2 config.json lacks the keys {missing}")
    block_size = raw.get("bd_size", FAST_DLLM_V2_BLOCK_SIZE)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ModelLoadError(f"Fast-dLLM v2 config.json: `bd_size` (the block size) must be a positive integer, "
                             f"got {block_size!r}")
    head_dim = raw.get("head_dim")
    heads = raw["num_attention_heads"]
    if head_dim is not None and isinstance(heads, int) and heads > 0 and head_dim * heads != raw["hidden_size"]:
        refuse(f"head_dim={head_dim!r} (the Qwen2 network uses hidden_size / num_attention_heads)")
    kwargs = {k: raw[k] for k in _DREAM_KEYS if k in raw}  # the same Qwen2 keys as Dream's
    return Qwen2Config(
        **kwargs,
        rope_parameters={"rope_type": "default", "rope_theta": raw.get("rope_theta", 10_000.0)},
        use_sliding_window=False,
        is_causal=False,  # the block-causal mask is built per call (d3llm.models.block)
        d3llm_family="block",
        d3llm_block_size=block_size,
        d3llm_block_alignment="absolute",  # its blocks: every bd_size positions from position 0, prompt included
        mask_token_id=raw.get("mask_token_id", FAST_DLLM_V2_MASK_TOKEN_ID),
    )


# --- Our own folders (ordinary transformers Llama / Qwen2) -------------------------------


def hf_config(raw: dict) -> PretrainedConfig:
    config_class = {"llama": LlamaConfig, "qwen2": Qwen2Config}[raw["model_type"]]
    config = config_class.from_dict(raw)
    if getattr(config, "d3llm_family", None) is None:
        # A stock causal LM (no d3llm keys) is usable as an autoregressive baseline.
        config.d3llm_family = "ar"
    return config


@dataclass(frozen=True)
class Layout:
    name: str
    to_config: Callable[[dict], PretrainedConfig]
    to_hf_name: Callable[[str], str | None]  # None: a tensor this layout does not use


LAYOUTS = {
    "hf": Layout("hf", hf_config, lambda name: name),
    "llada": Layout("llada", llada_config, llada_name_to_hf),
    "dream": Layout("dream", dream_config, lambda name: name),
    "fast_dllm_v2": Layout("fast_dllm_v2", fast_dllm_v2_config, lambda name: name),
}


def detect_layout(raw: dict) -> Layout:
    model_type = raw.get("model_type")
    if model_type in ("llama", "qwen2"):
        return LAYOUTS["hf"]
    if model_type == "llada":
        return LAYOUTS["llada"]
    if model_type == "Dream":
        return LAYOUTS["dream"]
    if model_type == "Fast_dLLM_Qwen":
        return LAYOUTS["fast_dllm_v2"]
    if model_type == "sdar":
        raise ModelLoadError(
            "SDAR checkpoints (model_type='sdar') are not supported yet: SDAR predicts each token at "
            "its own column (no logit shift) on a Qwen3 network, while d3llm's block family keeps the "
            "AR shift of Fast-dLLM v2 (docs/checkpoint-layouts.md, section 5)"
        )
    raise ModelLoadError(
        f"config.json has model_type={model_type!r}; d3llm loads llama and qwen2 folders "
        "(its own), and the official LLaDA ('llada'), Dream ('Dream') and Fast-dLLM v2 "
        "('Fast_dLLM_Qwen') layouts"
    )
