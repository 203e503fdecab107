"""KV-cache policies as settings: what each policy keeps, and for which models.

A policy is a small frozen settings object, registered by name (`CACHE_POLICIES`); its run-time
half (the tensors it holds across iterations, its `forward`) is in cache.py, looked up by the
policy's class. No torch here.

| name      | class          | keeps                                                        |
|-----------|----------------|--------------------------------------------------------------|
| `none`    | `NoCache`      | nothing: every iteration forwards the canvas (exact)         |
| `prefix`  | `PrefixCache`  | each row's columns before its first incomplete block (Fast-dLLM) |
| `delayed` | `DelayedCache` | completed blocks, `cache_delay` iterations after (d3LLM)     |
| `block`   | `BlockCache`   | finished blocks of block-diffusion models (exact)            |
| `kv`      | `KVCache`      | every column, for next-token decoding (autoregressive models)|
| `causal`  | `CausalCache`  | every committed column, causal keys (block models, `d3llm-exact`) |

`future_masks` (none, prefix, delayed) says what happens to the masked blocks after a row's last
created block: `forward` (the authors' code: in every forward, attended to), `cached` (read from
the cache, their keys from the row's last refresh: Fast-dLLM's dual cache, the `fast-dllm-dual`
preset) or `skip` (left out of the forward: less work, an approximation for bidirectional models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from d3llm.decode.parts import MAX_TOKENS, Part, Registry, boolean, one_of
from d3llm.errors import DecodeSettingError

FutureMasks = Literal["forward", "cached", "skip"]
CACHE_POLICIES = Registry()  # name -> CachePolicy class
register = CACHE_POLICIES.register  # class decorator: selectable by its `name` (`--set cache=NAME`)


@dataclass(frozen=True)
class CachePolicy(Part):
    """A cache policy and its settings (the dataclass fields)."""

    name: ClassVar[str]
    families: ClassVar[tuple[str, ...]] = ("llada", "dream")  # the model families it decodes


@register
@dataclass(frozen=True)
class NoCache(CachePolicy):
    name: ClassVar[str] = "none"
    families: ClassVar[tuple[str, ...]] = ("llada", "dream", "block")  # a block model's uncached reference
    future_masks: Literal["forward", "skip"] = "forward"

    def __post_init__(self) -> None:
        one_of("future_masks", self.future_masks, ("forward", "skip"))


@register
@dataclass(frozen=True)
class PrefixCache(CachePolicy):
    """Fast-dLLM's prefix cache: each row caches everything before its current block, rebuilt
    once per block; with `future_masks="cached"`, its dual cache."""

    name: ClassVar[str] = "prefix"
    future_masks: FutureMasks = "forward"

    def __post_init__(self) -> None:
        one_of("future_masks", self.future_masks, ("forward", "cached", "skip"))


@register
@dataclass(frozen=True)
class DelayedCache(PrefixCache):
    """d3LLM's cache (`generate_multi_block_kv_cache`, docs/method.md section 4): a completed
    block enters `cache_delay` iterations after it is seen complete; every `refresh_interval`-th
    iteration recomputes everything (None: never; the authors' `refresh_interval`); while a
    completed block waits, rows forward their whole canvas (`refresh_while_waiting`, the
    authors' schedule) or only from their cache end (less work)."""

    name: ClassVar[str] = "delayed"
    cache_delay: int = 1
    refresh_interval: int | None = None
    refresh_while_waiting: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        delay = self.cache_delay
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_TOKENS:
            raise DecodeSettingError(f"`cache_delay` must be >= 0 and at most {MAX_TOKENS}, got {delay!r}",
                                     "cache_delay")
        every = self.refresh_interval
        if every is not None and (isinstance(every, bool) or not isinstance(every, int)
                                  or not 1 <= every <= MAX_TOKENS):
            raise DecodeSettingError(f"`refresh_interval` must be >= 1 and at most {MAX_TOKENS}, or None (off), "
                                     f"got {every!r}", "refresh_interval")
        boolean("refresh_while_waiting", self.refresh_while_waiting)


@register
@dataclass(frozen=True)
class BlockCache(CachePolicy):
    """Block-diffusion models: a finished block's keys never change (block-causal attention),
    so each enters the cache once and is never recomputed (docs/block-diffusion.md)."""

    name: ClassVar[str] = "block"
    families: ClassVar[tuple[str, ...]] = ("block",)


@register
@dataclass(frozen=True)
class KVCache(CachePolicy):
    """Autoregressive models' cache of every column so far."""

    name: ClassVar[str] = "kv"
    families: ClassVar[tuple[str, ...]] = ("ar",)


@register
@dataclass(frozen=True)
class CausalCache(CachePolicy):
    """Block models decoded exactly (`d3llm-exact`, exact.py): every committed column with the
    keys of a causal forward, as the AR model's cache holds them; the keys of drafts and masks
    never stay. The cache of strategy `self-speculative`, and of no other."""

    name: ClassVar[str] = "causal"
    families: ClassVar[tuple[str, ...]] = ("block",)
