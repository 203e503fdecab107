"""Decode configuration: one frozen, validated dataclass; presets by name.

This first version carries the settings of the two baseline decoders (LLaDA's vanilla
semi-autoregressive decoding and greedy autoregressive decoding). The d3LLM engine adds its
own fields (thresholds, cache delay, refresh) here, under the same spellings as
shared/design.md.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal, get_args

from d3llm.errors import D3llmError

Method = Literal["vanilla", "ar"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass(frozen=True)
class DecodeConfig:
    method: Method = "vanilla"  # which decoder (a preset name)
    max_new_tokens: int = 64  # response canvas length
    block_size: int = 32  # semi-autoregressive block length (LLaDA: 32)
    tokens_per_step: int = 1  # vanilla: tokens committed per forward inside a block
    temperature: float = 0.0  # 0 = greedy (argmax); > 0 samples from softmax(logits / T)
    seed: int = 0  # sampling seed (used when temperature > 0)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise D3llmError(f"`method` must be one of {', '.join(METHODS)}, got {self.method!r}")
        for name in ("max_new_tokens", "block_size", "tokens_per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise D3llmError(f"`{name}` must be a positive integer, got {value!r}")
        if self.temperature < 0:
            raise D3llmError(f"`temperature` must be >= 0, got {self.temperature}")

    def override(self, **changes) -> "DecodeConfig":
        """A copy with `changes`; unknown names are an error that lists the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise D3llmError(f"unknown decode setting(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return replace(self, **changes)


PRESETS: dict[str, DecodeConfig] = {
    "vanilla": DecodeConfig(method="vanilla"),
    "ar": DecodeConfig(method="ar"),
}


def preset(name: str, **overrides) -> DecodeConfig:
    if name not in PRESETS:
        raise D3llmError(f"unknown method {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].override(**overrides)
