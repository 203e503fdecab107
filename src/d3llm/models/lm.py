"""Model families on transformers networks, and the one wrapper the rest of d3llm calls.

Four families share the `DiffusionLM` interface:

| family  | network                 | attention     | logit shift | mask token |
|---------|-------------------------|---------------|-------------|------------|
| `llada` | `LlamaForCausalLM`      | bidirectional | 0           | yes        |
| `dream` | `Qwen2ForCausalLM`      | bidirectional | 1           | yes        |
| `block` | `LlamaForCausalLM`      | block-causal  | 1           | yes        |
| `ar`    | `LlamaForCausalLM`      | causal        | 1           | no         |

A `block` model (block diffusion, `d3llm.models.block`) stores its block size in config.json
(`d3llm_block_size`); its forward needs `block_start`, the canvas column where the response's
blocks begin, and builds the block-causal mask from it (or takes every column's block id,
`column_blocks`: `d3llm-exact` lays out causal columns and a block of masks in one forward). A
LLaDA/Dream-style model may store the block size its decoders use by default
(`d3llm_decode_block_size`, docs/method.md section 3).

Bidirectional attention is transformers' own `is_causal=False` config switch, so the networks
stay stock: a folder we save loads with `AutoModelForCausalLM.from_pretrained` as well. Our
facts live in the same config.json (`d3llm_family`, `mask_token_id`).

`DiffusionLM.forward` returns logits *aligned* with the input: `logits[:, i]` is the
prediction for the token at position i, for every family. Shifted families (position i-1
predicts token i) need the output of the position before the window for the window's first
token; pass it as `prev_logits` (the previous call's `last_logits`) when the window starts
after a KV cache. Without it, position 0 reuses its own output, as the reference code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn
from transformers import Cache, LlamaConfig, LlamaForCausalLM, PretrainedConfig, PreTrainedModel
from transformers import Qwen2Config, Qwen2ForCausalLM

from d3llm.errors import ModelLoadError
from d3llm.models.block import as_attention_mask, block_causal_mask, block_ids

Family = Literal["llada", "dream", "block", "ar"]
FAMILIES: tuple[str, ...] = get_args(Family)
LOGIT_SHIFT = {"llada": 0, "dream": 1, "block": 1, "ar": 1}


def network_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The transformers network a config describes: Qwen2 (Dream; Qwen2-based AR or block
    models) or Llama (the rest)."""
    return Qwen2ForCausalLM if config.model_type == "qwen2" else LlamaForCausalLM


DECODE_BLOCK_KEY = "d3llm_decode_block_size"  # config.json: a LLaDA/Dream model's default decode block size
ALIGNMENT_KEY = "d3llm_block_alignment"  # config.json: a block model's block alignment (ModelFacts)


def is_positive_int(value: object) -> bool:
    """A config value that must be a count: an int >= 1 (JSON's true/false are not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class ModelFacts:
    """What the decode loop needs to know about a model besides its forward."""

    family: Family
    mask_token_id: int | None  # None for `ar`
    eos_token_id: int
    max_length: int  # longest canvas (prompt + response) the positions support
    block_size: int | None = None  # `block` family: the trained block size (None otherwise)
    # LLaDA/Dream-style: the block size its decoders use unless one is given (`d3llm_decode_block_size`,
    # written by `d3llm export --decode-block-size`; None: the presets' 32)
    decode_block_size: int | None = None
    # `block` family: where blocks start. "response" (ours): at the response's first column, the
    # prompt causal; "absolute" (Fast-dLLM v2's official convention, its checkpoints): every
    # `block_size` positions from position 0, the prompt block-causal too (`d3llm_block_alignment`)
    block_alignment: str = "response"

    @property
    def logit_shift(self) -> int:
        return LOGIT_SHIFT[self.family]

    @property
    def is_diffusion(self) -> bool:
        return self.family != "ar"

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> "ModelFacts":
        family = getattr(config, "d3llm_family", None)
        if family not in FAMILIES:
            raise ModelLoadError(f"config has `d3llm_family`={family!r}; expected one of {FAMILIES}")
        eos = config.eos_token_id
        eos = eos[0] if isinstance(eos, (list, tuple)) else eos
        mask = getattr(config, "mask_token_id", None)
        if eos is None:
            raise ModelLoadError("config has no `eos_token_id`")
        if family != "ar" and mask is None:
            raise ModelLoadError(f"a {family} model needs `mask_token_id` in its config")
        block_size = getattr(config, "d3llm_block_size", None) if family == "block" else None
        if family == "block" and not is_positive_int(block_size):
            raise ModelLoadError(f"a block model needs a positive integer `d3llm_block_size`, got {block_size!r}")
        decode_block = getattr(config, DECODE_BLOCK_KEY, None) if family in ("llada", "dream") else None
        if decode_block is not None and not is_positive_int(decode_block):
            raise ModelLoadError(f"`{DECODE_BLOCK_KEY}` must be a positive integer, got {decode_block!r}")
        alignment = getattr(config, ALIGNMENT_KEY, "response") if family == "block" else "response"
        if alignment not in ("response", "absolute"):
            raise ModelLoadError(f"`{ALIGNMENT_KEY}` must be 'response' or 'absolute', got {alignment!r}")
        return cls(family, mask, int(eos), int(config.max_position_embeddings), block_size, decode_block, alignment)


def make_config(
    family: Family,
    *,
    vocab_size: int,
    mask_token_id: int | None,
    eos_token_id: int,
    pad_token_id: int,
    hidden_size: int = 192,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_length: int = 1024,
    rope_theta: float = 10_000.0,
    block_size: int | None = None,  # `block` family only
) -> PretrainedConfig:
    """A transformers config for a new model of `family` (Llama or Qwen2 network)."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {FAMILIES}, got {family!r}")
    if hidden_size % num_heads:
        raise ValueError(f"`hidden_size` ({hidden_size}) must be divisible by `num_heads` ({num_heads})")
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size * 2 // 3 // 8 * 8,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_length,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        is_causal=(family == "ar"),
        d3llm_family=family,
        mask_token_id=mask_token_id,
        **({"d3llm_block_size": block_size} if family == "block" else {}),
    )
    config_class = Qwen2Config if family == "dream" else LlamaConfig
    return config_class(**common)


@dataclass
class LMOutput:
    logits: torch.Tensor  # (B, L, V) aligned: logits[:, i] predicts the token at position i
    last_logits: torch.Tensor | None  # (B, V) shifted families: prediction for position L
    # With `logits_to_keep=k`, `logits` covers the last k input positions only.
    past_key_values: Cache | None


class DiffusionLM(nn.Module):
    """A transformers network plus the facts of its family (see module docstring)."""

    def __init__(self, net: PreTrainedModel, facts: ModelFacts | None = None):
        super().__init__()
        self.net = net
        self.facts = facts or ModelFacts.from_config(net.config)

    @classmethod
    def new(cls, config: PretrainedConfig, seed: int | None = None) -> "DiffusionLM":
        """A randomly initialised model for `config` (from `make_config`)."""
        if seed is not None:
            torch.manual_seed(seed)
        return cls(network_class(config)(config))

    @property
    def config(self) -> PretrainedConfig:
        return self.net.config

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, L)
        attention_mask: torch.Tensor | None = None,  # (B, past + L) 1 = attend, 0 = padding
        position_ids: torch.Tensor | None = None,  # (B, L)
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        prev_logits: torch.Tensor | None = None,  # (B, V) shifted families, see docstring
        logits_to_keep: int = 0,  # > 0: logits of the last k positions only (0 = all)
        block_start: int | torch.Tensor | None = None,  # `block` family: the response's first column (or (B,))
        # `block` family: (B, past + L) the block id of every key column, cached ones first
        # (`d3llm.models.block`), instead of the layout `block_start` makes (d3llm-exact's forwards)
        column_blocks: torch.Tensor | None = None,
    ) -> LMOutput:
        length = input_ids.shape[1]
        if column_blocks is not None and self.facts.family != "block":
            raise ValueError(f"`column_blocks` lays out a block model's attention; this model is {self.facts.family}")
        if self.facts.family == "block":
            attention_mask = self._block_mask(input_ids, attention_mask, past_key_values, block_start, column_blocks)
        keep = length if logits_to_keep <= 0 else min(logits_to_keep, length)
        # A shifted family needs the output of the position before the first kept one.
        raw_keep = min(keep + self.facts.logit_shift, length)
        out = self.net(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            # transformers >= 5.24 names the KV cache `cache` (in and out); `past_key_values`
            # is its deprecated alias there (warns, removed in 5.40). Our API keeps the old name.
            cache=past_key_values,
            use_cache=use_cache,
            logits_to_keep=raw_keep,
        )
        raw = out.logits  # (B, raw_keep, V)
        if self.facts.logit_shift == 0:
            return LMOutput(raw, None, out.cache)
        if raw_keep > keep:  # the window does not start at position 0: no boundary needed
            return LMOutput(raw[:, :-1], raw[:, -1], out.cache)
        first = raw[:, :1] if prev_logits is None else prev_logits.unsqueeze(1)
        aligned = torch.cat([first, raw[:, :-1]], dim=1)
        return LMOutput(aligned, raw[:, -1], out.cache)

    def _block_mask(self, input_ids, attention_mask, cache, block_start, column_blocks=None) -> torch.Tensor:
        """The 4D block-causal mask of a window that starts after `cache`'s columns: of the
        blocks `column_blocks` gives, else of the model's layout from `block_start`."""
        if block_start is None and column_blocks is None and self.facts.block_alignment == "response":
            raise ValueError("a block model's forward needs `block_start` (the response's first column)")
        past = cache.get_seq_length() if cache is not None else 0
        total = past + input_ids.shape[1]
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape[0], total, dtype=torch.long, device=input_ids.device)
        if column_blocks is not None:
            ids = column_blocks
        elif self.facts.block_alignment == "absolute":  # blocks of positions, counted from each row's first token
            ids = (attention_mask[:, :total].cumsum(1) - 1).clamp(min=0) // self.facts.block_size
        else:
            ids = block_ids(total, block_start, self.facts.block_size, input_ids.device)
        mask = block_causal_mask(ids[..., past:], ids, attention_mask[:, :total])
        return as_attention_mask(mask, self.net.config, self.dtype)

    def save_pretrained(self, folder, **kwargs) -> None:
        """An ordinary Hugging Face folder: config.json + model.safetensors."""
        self.net.save_pretrained(folder, **kwargs)
