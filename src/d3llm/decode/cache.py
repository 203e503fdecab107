"""KV-cache policies: what each iteration forwards, and what stays cached.

Every policy answers one question per iteration, `forward(model, state)`, and returns the
aligned logits of the response columns it computed plus the first of those columns (the
network's LM head runs only there: `logits_to_keep`). The two cached
policies share one mechanism (`_PrefixCache`): a transformers `DynamicCache` that holds the
keys/values of canvas columns `[0, end)`. An iteration either *refreshes* (forwards the whole
canvas into a new cache, then crops it to the policy's target) or forwards `[end, L)` with the
cache as context and crops back to the target (keeping any newly cached block).

- `none`: every iteration forwards the whole canvas (exact).
- `prefix` (Fast-dLLM): the target is the start of the first incomplete block; the cache is
  rebuilt (refresh) whenever that start moves, i.e. once per block.
- `delayed` (d3LLM): a block enters the cache `cache_delay` iterations after it completed;
  while any completed block is waiting, iterations refresh; also every `refresh_interval`.
- `dual` (Fast-dLLM's dual cache): like `prefix`, but the masked suffix after the current
  block is cached too, so an iteration forwards the current block alone. Attention is
  bidirectional, so the order of cached keys does not matter: the cache holds
  `[prefix, suffix]` and the block's keys are appended (and dropped again) after them.
- `block` (block-diffusion models only): exact by construction. Attention is block-causal, so
  a finished block's keys never change: each enters the cache once, from the first forward
  that sees it finished, and is never recomputed. An iteration forwards the blocks finished
  since the last one and the current blocks, nothing after them.

A batch shares one cache, so its length is the minimum over rows: a row ahead of the others
simply caches less (correct, slightly slower). Rows that finish leave the cache with the batch
(`select_rows`). For shifted families (Dream) the prediction of
the first uncached column comes from the last cached one; we keep it (`boundary_logits`) from
the forward that computed it and pass it as `prev_logits`.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from d3llm.decode.config import DecodeConfig
from d3llm.decode.state import DecodeState


class NoCache:
    def __init__(self, config: DecodeConfig):
        self.config = config

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only rows `index` of the batch (finished rows leave it)."""

    def forward(self, model, state: DecodeState) -> tuple[torch.Tensor, int]:
        out = model(state.canvas, attention_mask=state.attention, position_ids=state.positions,
                    logits_to_keep=state.num_new, block_start=state.start)
        return out.logits, state.start


class _Cached(NoCache):
    """What the cached policies hold per row: the cache and the boundary prediction."""

    def __init__(self, config: DecodeConfig):
        super().__init__(config)
        self.cache: DynamicCache | None = None
        self.boundary_logits: torch.Tensor | None = None  # (B, V) prediction for the first uncached column

    def select_rows(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.batch_select_indices(index)
        if self.boundary_logits is not None:
            self.boundary_logits = self.boundary_logits[index]


class _PrefixCache(_Cached):
    def __init__(self, config: DecodeConfig):
        super().__init__(config)
        self.end = 0  # cached columns [0, end)

    def target(self, state: DecodeState) -> int:
        raise NotImplementedError

    def must_refresh(self, state: DecodeState, target: int) -> bool:
        raise NotImplementedError

    def forward(self, model, state: DecodeState) -> tuple[torch.Tensor, int]:
        target = self.target(state)
        if self.cache is None or self.must_refresh(state, target):
            self.cache = DynamicCache(config=model.config)
            first = state.start  # logits from here on (the prompt's are never needed)
            out = model(state.canvas, attention_mask=state.attention, position_ids=state.positions,
                        past_key_values=self.cache, use_cache=True, logits_to_keep=state.num_new)
        else:
            first = self.end
            out = model(state.canvas[:, first:], attention_mask=state.attention,
                        position_ids=state.positions[:, first:], past_key_values=self.cache,
                        use_cache=True, prev_logits=self.boundary_logits)
        self.cache.crop(target - self.cache.get_seq_length())
        self.end = target
        if target < state.canvas.shape[1]:
            self.boundary_logits = out.logits[:, target - first]
        return out.logits, first


class PrefixCache(_PrefixCache):
    """Fast-dLLM's prefix cache: everything before the current block, rebuilt once per block."""

    def target(self, state: DecodeState) -> int:
        return first_incomplete_block_start(state)

    def must_refresh(self, state: DecodeState, target: int) -> bool:
        return target != self.end


class DelayedCache(_PrefixCache):
    """d3LLM's cache: completed blocks enter after `cache_delay` iterations; refresh while any
    completed block waits, and every `refresh_interval` iterations."""

    def _settled(self, state: DecodeState) -> torch.Tensor:
        done = state.completed_at >= 0
        return done & (state.step >= state.completed_at + self.config.cache_delay)

    def target(self, state: DecodeState) -> int:
        settled = self._settled(state)  # (B, nb)
        leading = settled.long().cumprod(1).sum(1)  # leading settled blocks per row
        return min(state.start + int(leading.min()) * state.block_size, state.canvas.shape[1])

    def must_refresh(self, state: DecodeState, target: int) -> bool:
        waiting = (state.completed_at >= 0) & ~self._settled(state)
        interval = self.config.refresh_interval
        return bool(waiting.any()) or (interval is not None and state.step % interval == 0)


def first_incomplete_block_start(state: DecodeState) -> int:
    """Column where the first block that is incomplete in any row starts (canvas end if none)."""
    incomplete = state.progress() < 1  # (B, nb)
    nb = state.num_blocks
    first = torch.where(incomplete, torch.arange(nb, device=incomplete.device), nb).min(1).values
    return min(state.start + int(first.min()) * state.block_size, state.canvas.shape[1])


class DualCache(_Cached):
    """Fast-dLLM's dual cache: prefix and suffix cached, one block forwarded per iteration;
    rebuilt whenever the current block changes."""

    def __init__(self, config: DecodeConfig):
        super().__init__(config)
        self.block = (0, 0)  # current block columns [begin, end)

    def forward(self, model, state: DecodeState) -> tuple[torch.Tensor, int]:
        begin = first_incomplete_block_start(state)
        end = min(begin + state.block_size, state.canvas.shape[1])
        if self.cache is None or (begin, end) != self.block:
            self.cache = DynamicCache(config=model.config)
            out = model(state.canvas, attention_mask=state.attention, position_ids=state.positions,
                        past_key_values=self.cache, use_cache=True, logits_to_keep=state.num_new)
            for layer in self.cache.layers:  # keep [0, begin) and [end, L): the block is recomputed
                layer.keys = torch.cat([layer.keys[..., :begin, :], layer.keys[..., end:, :]], dim=-2)
                layer.values = torch.cat([layer.values[..., :begin, :], layer.values[..., end:, :]], dim=-2)
            self.block = (begin, end)
            self.boundary_logits = out.logits[:, begin - state.start]
            return out.logits, state.start
        a = state.attention
        key_mask = torch.cat([a[:, :begin], a[:, end:], a[:, begin:end]], dim=1)  # cached order, then block
        out = model(state.canvas[:, begin:end], attention_mask=key_mask, position_ids=state.positions[:, begin:end],
                    past_key_values=self.cache, use_cache=True, prev_logits=self.boundary_logits)
        self.cache.crop(-(end - begin))
        return out.logits, begin


class BlockCache(_Cached):
    """The block family's exact cache (see module docstring): cached columns [0, end), where
    `end` is the start of the first block that some row has not finished."""

    def __init__(self, config: DecodeConfig):
        super().__init__(config)
        self.end = 0

    def forward(self, model, state: DecodeState) -> tuple[torch.Tensor, int]:
        begin, stop = first_incomplete_block_start(state), current_blocks_end(state)
        window = dict(attention_mask=state.attention[:, :stop], past_key_values=self.cache, use_cache=True,
                      block_start=state.start)
        if self.cache is None:  # the prompt too; logits from the response on
            first = state.start
            window["past_key_values"] = self.cache = DynamicCache(config=model.config)
            out = model(state.canvas[:, :stop], position_ids=state.positions[:, :stop],
                        logits_to_keep=stop - first, **window)
        else:
            first = self.end
            out = model(state.canvas[:, first:stop], position_ids=state.positions[:, first:stop],
                        prev_logits=self.boundary_logits, **window)
        self.cache.crop(begin - stop)  # finished blocks stay; the current ones are computed again
        self.end, self.boundary_logits = begin, out.logits[:, begin - first]
        return out.logits, first


def current_blocks_end(state: DecodeState) -> int:
    """Column where the furthest of the rows' first incomplete blocks ends."""
    incomplete = state.progress() < 1  # (B, nb)
    nb = state.num_blocks
    first = torch.where(incomplete, torch.arange(nb, device=incomplete.device), nb - 1).min(1).values
    return min(state.start + (int(first.max()) + 1) * state.block_size, state.canvas.shape[1])


CACHE_POLICIES = {"none": NoCache, "prefix": PrefixCache, "delayed": DelayedCache, "dual": DualCache,
                  "block": BlockCache}
