"""Decode configuration: one frozen, validated dataclass; named presets.

Every method of the comparison is a point in the same space of settings, decoded by the
same loop (`d3llm.decode.loop`):

| preset        | selection                    | blocks                       | cache            | early stop |
|---------------|------------------------------|------------------------------|------------------|------------|
| `vanilla`     | top-`tokens_per_step` by p   | one at a time                | none             | no         |
| `fast-dllm`   | p >= 0.9 (+ best one)        | one at a time                | prefix           | no         |
| `fast-dllm-dual` | as `fast-dllm`            | one at a time                | prefix + suffix  | no         |
| `dparallel`   | H <= 0.5 nats (+ best one)   | one at a time                | none             | no         |
| `d3llm`       | H <= 0.5 nats (+ best one)   | multi-block (add 0.1, act 0.95) | none          | yes        |
| `d3llm-cache` | as `d3llm`                   | as `d3llm`                   | delayed, delay 1 | yes        |
| `ar`          | greedy next token (AR models)| -                            | KV cache         | at EOS     |

Settings follow docs/method.md section 3-4 (authors' values: entropy
threshold 0.4-0.5 nats, block add 0.1, activation 0.95, cache delay 1-2; Fast-dLLM's
confidence threshold 0.9).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from d3llm.errors import D3llmError

Strategy = Literal["topk", "confidence", "entropy"]
CachePolicy = Literal["none", "prefix", "dual", "delayed"]
Forcing = Literal["block", "global"]
RankBy = Literal["confidence", "entropy"]
STRATEGIES = ("topk", "confidence", "entropy")
CACHE_POLICIES = ("none", "prefix", "dual", "delayed")


@dataclass(frozen=True)
class DecodeConfig:
    method: str = "vanilla"  # preset name this config came from ("ar" selects the AR decoder)
    max_new_tokens: int = 64  # response canvas length
    block_size: int = 32  # block length (the last block may be shorter)
    strategy: Strategy = "topk"  # how masked positions are chosen for commitment
    tokens_per_step: int = 1  # topk: positions committed per forward in the current block
    rank_by: RankBy = "confidence"  # topk: most probable proposals (LLaDA) or lowest entropy (Dream)
    threshold: float = 0.5  # entropy: max nats; confidence: min probability of the argmax
    block_add_threshold: float = 1.0  # create the next block when the last reaches this progress
    block_activate_threshold: float = 1.0  # a block is fully active when its predecessor reaches this
    forcing: Forcing = "block"  # forced progress: best of the first fully-active block, or global best
    early_stop: bool = False  # fill everything after the first committed EOS with EOS
    cache: CachePolicy = "none"  # KV-cache policy
    cache_delay: int = 1  # delayed: iterations a completed block waits before it is cached
    refresh_interval: int | None = None  # delayed: recompute everything every N iterations (None: off)
    temperature: float = 0.0  # 0 = argmax; > 0 samples committed tokens from softmax(logits / T)
    seed: int = 0  # sampling seed (temperature > 0)

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "block_size", "tokens_per_step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise D3llmError(f"`{name}` must be a positive integer, got {value!r}")
        _choice("strategy", self.strategy, STRATEGIES)
        _choice("cache", self.cache, CACHE_POLICIES)
        _choice("forcing", self.forcing, ("block", "global"))
        _choice("rank_by", self.rank_by, ("confidence", "entropy"))
        if self.strategy == "entropy" and not 0 < self.threshold <= 10:
            raise D3llmError(f"`threshold` must be in (0, 10] nats for entropy selection, got {self.threshold}")
        if self.strategy == "confidence" and not 0 < self.threshold <= 1:
            raise D3llmError(f"`threshold` must be in (0, 1] for confidence selection, got {self.threshold}")
        for name in ("block_add_threshold", "block_activate_threshold"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise D3llmError(f"`{name}` must be in (0, 1], got {value}")
        if self.cache_delay < 0:
            raise D3llmError(f"`cache_delay` must be >= 0, got {self.cache_delay}")
        if self.refresh_interval is not None and self.refresh_interval < 1:
            raise D3llmError(f"`refresh_interval` must be >= 1 or None (off), got {self.refresh_interval}")
        if self.temperature < 0:
            raise D3llmError(f"`temperature` must be >= 0, got {self.temperature}")

    @property
    def is_autoregressive(self) -> bool:
        return self.method == "ar"

    def override(self, **changes) -> "DecodeConfig":
        """A copy with `changes`; unknown names are an error that lists the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise D3llmError(f"unknown decode setting(s) {unknown}; valid: {', '.join(sorted(valid))}")
        return replace(self, **changes)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise D3llmError(f"`{name}` must be one of {', '.join(allowed)}, got {value!r}")


_MULTI_BLOCK = dict(strategy="entropy", threshold=0.5, block_add_threshold=0.1,
                    block_activate_threshold=0.95, early_stop=True)

PRESETS: dict[str, DecodeConfig] = {
    "vanilla": DecodeConfig(method="vanilla"),
    "fast-dllm": DecodeConfig(method="fast-dllm", strategy="confidence", threshold=0.9, cache="prefix"),
    "fast-dllm-dual": DecodeConfig(method="fast-dllm-dual", strategy="confidence", threshold=0.9, cache="dual"),
    "dparallel": DecodeConfig(method="dparallel", strategy="entropy", threshold=0.5),
    "d3llm": DecodeConfig(method="d3llm", **_MULTI_BLOCK),
    "d3llm-cache": DecodeConfig(method="d3llm-cache", cache="delayed", cache_delay=1, **_MULTI_BLOCK),
    "ar": DecodeConfig(method="ar"),
}
METHODS: tuple[str, ...] = tuple(PRESETS)


def preset(name: str, **overrides) -> DecodeConfig:
    """The named preset with `overrides` applied (validated)."""
    if name not in PRESETS:
        raise D3llmError(f"unknown method {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].override(**overrides)


def parse_overrides(items: list[str]) -> dict:
    """`["threshold=0.4", "early_stop=false", "refresh_interval=none"]` -> typed overrides.

    Values are converted by the type of the `DecodeConfig` field they name, so a typo in a
    name or a value is an error that says which."""
    types = {f.name: f.type for f in fields(DecodeConfig)}
    out: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types:
            raise D3llmError(f"decode setting {item!r} must be NAME=VALUE with NAME one of {', '.join(types)}")
        kind, text = str(types[name]), text.strip()
        try:
            if text.lower() == "none" and "None" in kind:
                out[name] = None
            elif kind.startswith("bool"):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                out[name] = text.lower() in ("true", "1", "yes")
            elif kind.startswith("int"):
                out[name] = int(text)
            elif kind.startswith("float"):
                out[name] = float(text)
            else:
                out[name] = text
        except ValueError:
            raise D3llmError(f"decode setting {name}: cannot read {text!r} as {kind}") from None
    return out
