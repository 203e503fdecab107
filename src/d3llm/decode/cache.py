"""KV-cache policies at run time: what each iteration forwards, and what stays cached.

A policy's settings are an object of policies.py; `open_cache(policy)` makes its run-time half
here, which holds the cache across iterations. Every one answers one question per iteration,
`forward(model, state)`: it returns logits
(B, W, V) and `columns` (B, W), the canvas column each logit predicts (-1: none); the network's
LM head runs only where logits are needed (`logits_to_keep`).

- `none`: every iteration forwards the whole canvas (exact).
- `prefix` (Fast-dLLM): a row caches everything before its first incomplete block; its cache is
  rebuilt (refresh) whenever that start moves, i.e. once per block.
- `delayed` (d3LLM): a row's block enters its cache `cache_delay` iterations after it completed
  (its keys from that iteration's forward); while any completed block of the row is waiting,
  the row's iterations refresh (`refresh_while_waiting`, the official code; off: they forward from
  the row's cache on, which holds settled blocks only); also every `refresh_interval` iterations.
- `prefix` with `future_masks="cached"` (Fast-dLLM's dual cache): the masks after the current
  block are read from the cache too, so an iteration forwards the current block alone.
- `block` (block-diffusion models only): exact by construction. Attention is block-causal, so a
  finished block's keys never change: each enters the cache once, from the first forward that
  sees it finished, and is never recomputed. An iteration forwards the blocks finished since
  the last one and the current blocks, nothing after them. The batch shares one cache, up to
  the first block some row has not finished (exact all the same: a row ahead caches less).

`future_masks="cached"` (a setting of `prefix` and `delayed`) in general: a row's cache holds every
column of the canvas at its last refresh (slot k = column k); an iteration forwards the row's
created blocks after its cached prefix, and attends to the prefix and to the masks after its
last created block in the cache (their keys from that refresh). Attention is bidirectional
and keys carry their positions, so where a key sits in the cache does not matter. Columns that
settle take the window's keys; the window's own keys then leave the cache.

`none`, `prefix` and `delayed` forward up to the canvas end, or, with `future_masks="skip"`, up to
each row's last created block (`_extent`): later columns are masks no candidate is in, left out
of the forward altogether (an approximation that changes what the model sees; `cached`
keeps them in view).

Under bidirectional attention a cached key is an approximation (computed while later columns
were still masked), so what a row decodes depends on which of its columns were cached when.
`prefix` and `delayed` therefore keep each row's cache to itself (`RowCaches`), and a
batch decodes what each of its prompts decodes alone: slot k of the one padded cache holds, for
row r, the keys of some column of row r or nothing, and an attention mask over the slots
(`visible`) shows each row its own. Each row decides its own refreshes; an iteration where
some rows refresh and others do not forwards the two groups apart (the whole canvas; windows
with their caches) and joins the results. Rows that finish leave the cache with the batch
(`select_rows`). For shifted families (Dream) the prediction of a row's first uncached column
comes from the last cached one; we keep it (`boundary`) from the forward that computed it and
write it over that column's logits.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from d3llm.decode.policies import BlockCache, CachePolicy, DelayedCache, NoCache, PrefixCache
from d3llm.decode.state import DecodeState
from d3llm.tensors import first_index

Forwarded = tuple[torch.Tensor, torch.Tensor]  # logits (B, W, V), columns (B, W)

_EMPTY: dict[int, tuple[weakref.ref, DynamicCache]] = {}  # id(config) -> (the config, an empty cache for it)


def new_cache(config) -> DynamicCache:
    """An empty `DynamicCache` laid out for a model `config` (its layer types). transformers
    builds one by reading the config attribute by attribute (over 100 microseconds, a good part
    of what a small model's forward leaves to the loop); this copies the one built for the
    config on its first use. An empty layer holds no tensor it later updates in place (an
    update rebinds its keys and values), so a copy of each layer is a new layer. Entries leave
    with their config."""
    key = id(config)
    entry = _EMPTY.get(key)
    if entry is None or entry[0]() is not config:
        forget = lambda _, key=key: _EMPTY.pop(key, None)  # noqa: E731
        entry = _EMPTY[key] = (weakref.ref(config, forget), DynamicCache(config=config))
    kv = copy.copy(entry[1])
    kv.layers = [copy.copy(layer) for layer in kv.layers]
    return kv


def _span(first: int, width: int, rows: int, device: torch.device) -> torch.Tensor:
    """(rows, width): columns first .. first + width - 1 in every row."""
    return torch.arange(first, first + width, device=device).expand(rows, width)


class NoCacheRun:
    """Every iteration forwards the canvas (up to the created blocks' end with `future_masks="skip"`)."""

    def __init__(self, policy: CachePolicy):
        self.policy = policy

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only rows `index` of the batch (finished rows leave it)."""

    def forward(self, model, state: DecodeState) -> Forwarded:
        stop, keep = _extent(state, self.policy.future_masks == "skip")
        out = model(state.canvas[:, :stop], attention_mask=keep, position_ids=state.positions[:, :stop],
                    logits_to_keep=stop - state.start, block_start=state.start)
        return out.logits, _span(state.start, stop - state.start, len(state.canvas), state.canvas.device)


def _extent(state: DecodeState, to_created: bool) -> tuple[int, torch.Tensor]:
    """(stop, keep): forwards end at canvas column `stop`; `keep` (B, stop) is the attention mask
    of the columns each row's forward holds: not left padding, and `to_created` (`future_masks`
    skip, or a window whose later masks come from the cache) nothing after the row's last created
    block (its own end, so a row decodes what it does alone)."""
    if not to_created:
        return state.canvas.shape[1], state.attention
    ends = state.created_end()
    stop = int(ends.max())
    before_end = torch.arange(stop, device=ends.device) < ends.unsqueeze(1)
    return stop, state.attention[:, :stop] * before_end


@dataclass
class RowCaches:
    """Every row's own cache in one padded `DynamicCache` (see the module docstring)."""

    kv: DynamicCache
    visible: torch.Tensor  # (B, S) bool: the slots a row attends to (its own keys, not left padding)
    prefix: torch.Tensor  # (B,) the row holds columns [0, prefix) in slots [0, prefix)
    boundary: torch.Tensor | None  # (B, V) prediction for each row's first uncached column (shifted families)

    def select(self, index: torch.Tensor) -> "RowCaches":
        self.kv.batch_select_indices(index)
        boundary = None if self.boundary is None else self.boundary[index]
        return RowCaches(self.kv, self.visible[index], self.prefix[index], boundary)


def gather_slots(kv: DynamicCache, source: torch.Tensor) -> None:
    """Keep, for each row, the slots `source` (B, T) of `kv`, in that order."""
    for layer in kv.layers:
        index = source[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
        layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)


def _settle_from_window(kv: DynamicCache, slots: int, lo: int, end: torch.Tensor, target: torch.Tensor) -> None:
    """A cache whose slot k holds column k, for k < `slots`, with a window's keys appended
    (column lo + j in slot slots + j): columns [end, target) of each row take the window's keys,
    and the window leaves."""
    width = int(target.max())
    if width > lo:
        k = torch.arange(lo, width, device=end.device)
        fresh = ((k >= end.unsqueeze(1)) & (k < target.unsqueeze(1)))[:, None, :, None]
        for layer in kv.layers:
            for name in ("keys", "values"):
                held = getattr(layer, name)
                held[:, :, lo:width] = torch.where(fresh, held[:, :, slots:slots + width - lo], held[:, :, lo:width])
    kv.crop(slots - kv.get_seq_length())


def _with_boundary(model, logits: torch.Tensor, end: torch.Tensor, first: int, boundary: torch.Tensor | None
                   ) -> torch.Tensor:
    """Shifted families: logits[r, end[r] - first], row r's first uncached column (logits
    starting at column `first`), become `boundary[r]`, kept from the forward that cached the
    column before it."""
    if model.facts.logit_shift:
        logits[torch.arange(len(end), device=end.device), end - first] = boundary
    return logits


def _cat_padded(a: torch.Tensor, b: torch.Tensor, dim: int, value: float = 0) -> torch.Tensor:
    """`a` and `b` stacked along dim 0, the shorter one padded with `value` along `dim`."""
    size = max(a.shape[dim], b.shape[dim])

    def grow(t: torch.Tensor) -> torch.Tensor:
        shape = list(t.shape)
        shape[dim] = size - t.shape[dim]
        return torch.cat([t, t.new_full(shape, value)], dim)

    return torch.cat([grow(a), grow(b)])


Step = tuple[torch.Tensor, torch.Tensor, RowCaches]  # logits, columns, the rows' caches after it


def _join(one: Step, two: Step, order: torch.Tensor) -> Step:
    """Two groups of rows as one batch: row i is row `order[i]` of `one` and `two` stacked."""
    (logits_a, columns_a, a), (logits_b, columns_b, b) = one, two
    for layer_a, layer_b in zip(a.kv.layers, b.kv.layers):
        layer_a.keys = _cat_padded(layer_a.keys, layer_b.keys, 2)[order]
        layer_a.values = _cat_padded(layer_a.values, layer_b.values, 2)[order]
    boundary = None if a.boundary is None else torch.cat([a.boundary, b.boundary])[order]
    rows = RowCaches(a.kv, _cat_padded(a.visible, b.visible, 1, False)[order], torch.cat([a.prefix, b.prefix])[order],
                     boundary)
    return _cat_padded(logits_a, logits_b, 1)[order], _cat_padded(columns_a, columns_b, 1, -1)[order], rows


class PerRowCacheRun(NoCacheRun):
    """A policy where each row keeps its own cache and decides its own refreshes. `schedule`
    says, once per iteration, where each row's cache should now end (`target`, passed to the
    rest) and which rows rebuild theirs."""

    def __init__(self, policy: CachePolicy):
        super().__init__(policy)
        self.rows: RowCaches | None = None

    def select_rows(self, index: torch.Tensor) -> None:
        if self.rows is not None:
            self.rows = self.rows.select(index)

    def schedule(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B,) `target`, where each row's cache should now end, and (B,) bool: rows whose
        cache is rebuilt from a forward of the whole canvas (None: every row, as none has a
        cache yet)."""
        raise NotImplementedError

    def refresh(self, model, state: DecodeState, target: torch.Tensor) -> Step:
        raise NotImplementedError

    def cached(self, model, state: DecodeState, target: torch.Tensor, rows: RowCaches) -> Step:
        raise NotImplementedError

    def forward(self, model, state: DecodeState) -> Forwarded:
        target, fresh = self.schedule(state)
        refreshing = len(target) if fresh is None else int(fresh.sum())
        if refreshing == len(target):
            logits, columns, self.rows = self.refresh(model, state, target)
        elif refreshing == 0:
            logits, columns, self.rows = self.cached(model, state, target, self.rows)
        else:
            one, two = fresh.nonzero().flatten(), (~fresh).nonzero().flatten()
            refreshed = self.refresh(model, state.select(one), target[one])
            kept = self.cached(model, state.select(two), target[two], self.rows.select(two))
            logits, columns, self.rows = _join(refreshed, kept, torch.argsort(torch.cat([one, two])))
        return logits, columns


def _forward_all(model, state: DecodeState, extent: tuple[int, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, DynamicCache]:
    """The canvas (up to `extent`'s stop, default the end) into a new cache; logits of the
    response only."""
    stop, keep = extent or (state.canvas.shape[1], state.attention)
    kv = new_cache(model.config)
    out = model(state.canvas[:, :stop], attention_mask=keep, position_ids=state.positions[:, :stop],
                past_key_values=kv, use_cache=True, logits_to_keep=stop - state.start)
    return out.logits, kv


class PrefixCacheRun(PerRowCacheRun):
    """Fast-dLLM's prefix cache: each row caches its columns [0, target), `target` (B,) from
    `schedule`: everything before its first incomplete block, rebuilt once per block."""

    def schedule(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor | None]:
        target = incomplete_block_starts(state)
        return target, None if self.rows is None else target != self.rows.prefix

    def refresh(self, model, state: DecodeState, target: torch.Tensor) -> Step:
        logits, kv = _forward_all(model, state, _extent(state, self.policy.future_masks == "skip"))
        if self.policy.future_masks != "cached":  # else every column stays: slot k holds column k
            kv.crop(int(target.max()) - kv.get_seq_length())
        columns = _span(state.start, logits.shape[1], len(target), target.device)
        return logits, columns, self._rows(model, state, kv, target, logits, state.start)

    def cached(self, model, state: DecodeState, target: torch.Tensor, rows: RowCaches) -> Step:
        """Forward [lo, stop), lo the shortest row cache, `stop` the canvas end or the last created
        block's end (`_extent`): each row attends to its cached slots and to the window's columns
        after them; with `future_masks="cached"`, also to its slots after its last created block."""
        end, slots = rows.prefix, rows.visible.shape[1]
        lo, width = torch.stack([end.min(), target.max()]).tolist()
        cached_future = self.policy.future_masks == "cached"
        stop, keep = _extent(state, self.policy.future_masks != "forward")
        window = _span(lo, stop - lo, len(end), end.device)
        in_cache = window < end.unsqueeze(1)  # the row's cache holds these columns
        visible = rows.visible
        if cached_future:  # slot k is column k: the masks after the created blocks
            after = torch.arange(slots, device=end.device) >= state.created_end().unsqueeze(1)
            visible = visible | (after & state.attention.bool())
        mask = torch.cat([visible, keep[:, lo:].masked_fill(in_cache, 0)], 1)  # 1 / 0 (long)
        out = model(state.canvas[:, lo:stop], attention_mask=mask, position_ids=state.positions[:, lo:stop],
                    past_key_values=rows.kv, use_cache=True, prev_logits=rows.boundary)
        logits = _with_boundary(model, out.logits, end, lo, rows.boundary)
        if cached_future:  # columns newly cached take the window's keys; the rest stay
            _settle_from_window(rows.kv, slots, lo, end, target)
        elif lo == slots:  # every row caches [0, lo): slots and columns coincide
            rows.kv.crop(width - rows.kv.get_seq_length())
        else:  # each row's cached slots, then the window's
            j = _span(0, width, len(end), end.device)
            gather_slots(rows.kv, torch.where(j < end.unsqueeze(1), j, slots + j - lo))
        return logits, window.masked_fill(in_cache, -1), self._rows(model, state, rows.kv, target, logits, lo)

    @staticmethod
    def _rows(model, state: DecodeState, kv: DynamicCache, target: torch.Tensor, logits: torch.Tensor,
              first: int) -> RowCaches:
        """Each row's cache of [0, target) (its slots [0, max target)) after a forward whose logits
        start at column `first`; shifted families also keep the prediction of each row's first
        uncached column."""
        width = kv.get_seq_length()
        held = torch.arange(width, device=target.device) < target.unsqueeze(1)
        boundary = None
        if model.facts.logit_shift:
            at = (target - first).clamp(min=0, max=logits.shape[1] - 1)  # a row cached whole is finished
            boundary = logits[torch.arange(len(target), device=target.device), at]
        return RowCaches(kv, held & state.attention[:, :width].bool(), target, boundary)


class DelayedCacheRun(PrefixCacheRun):
    """d3LLM's cache, as the authors' `generate_multi_block_kv_cache` keeps it (docs/method.md
    section 4). Blocks enter in order, the prompt first: a block is *seen* complete at the first
    iteration where it is complete and the block before it is cached (`settled`), and enters the
    cache `cache_delay` iterations after that, in the forward of that iteration, which runs from
    the old cache end and keeps the window's keys of the newly cached columns. Otherwise a row
    refreshes (a whole-canvas forward rewriting its cached prefix) while its first uncached block
    is complete but not yet cached (`refresh_while_waiting`), and every `refresh_interval`-th iteration
    (counted from 1, as their `nfe`); else it forwards from its cache end. Blocks that early stop
    creates (wholly after the EOS) are never cached and never wait."""

    @staticmethod
    def cacheable_complete(state: DecodeState) -> torch.Tensor:
        """(B, nb) bool: complete blocks, less those early stop created (never cached)."""
        return (state.completed_at >= 0) & (state.block_ids < state.stop_created_from.unsqueeze(1))

    def settled(self, state: DecodeState, complete: torch.Tensor) -> torch.Tensor:
        """(B,) blocks of each row that are settled: seen complete `cache_delay` iterations ago
        or more, in order, the prompt first (`complete`: `cacheable_complete`). Block b is seen at
        seen[b] = max(completed_at[b] + 1, seen[b-1] + delay), the prompt at step -1; in closed
        form b*delay + max(delay - 1, max_{j<=b} (completed_at[j] + 1 - j*delay)), which never
        decreases in b: the settled blocks are the leading complete ones seen by step - delay."""
        delay = self.policy.cache_delay
        later = state.block_ids * delay
        term = torch.where(complete, state.completed_at + 1 - later, torch.iinfo(torch.long).min)
        seen = later + term.cummax(1).values.clamp(min=delay - 1)
        leading = complete.long().cumprod(1).sum(1)
        return torch.minimum(leading, (seen <= state.step - delay).sum(1))

    def schedule(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor | None]:
        complete = self.cacheable_complete(state)
        if state.step < self.policy.cache_delay - 1:  # the prompt (seen at step -1) is not cached yet
            target = torch.zeros_like(state.created)
        else:
            target = (state.start + self.settled(state, complete) * state.block_size).clamp(max=state.canvas.shape[1])
        if self.rows is None:
            return target, None
        held = self.rows.prefix
        refresh = held == 0
        interval = self.policy.refresh_interval  # every row started at step 0: the step is each row's
        if interval is not None and (state.step + 1) % interval == 0:
            return target, refresh | (target <= held)
        if self.policy.refresh_while_waiting:  # else the window forward recomputes the waiting blocks anyway
            first = ((held - state.start).clamp(min=0) // state.block_size).clamp(max=state.num_blocks - 1)
            waiting = complete.gather(1, first.unsqueeze(1)).squeeze(1)  # the first uncached block
            refresh = refresh | ((target <= held) & waiting)  # rows whose cache grows forward from its end
        return target, refresh


def incomplete_block_starts(state: DecodeState) -> torch.Tensor:
    """(B,) column where each row's first incomplete block begins (canvas end if none; for
    blocks aligned to position 0, block 0 begins in the prompt, `DecodeState.block_begins`)."""
    return state.block_begins()[first_index(state.completed_at < 0)]  # nb (the canvas end) where none


class BlockCacheRun(NoCacheRun):
    """The block family's exact cache (see module docstring): cached columns [0, end), where
    `end` is the start of the first block that some row has not finished."""

    def __init__(self, policy: CachePolicy):
        super().__init__(policy)
        self.cache: DynamicCache | None = None
        self.boundary_logits: torch.Tensor | None = None  # (B, V) prediction for the first uncached column
        self.end = 0

    def select_rows(self, index: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.batch_select_indices(index)
        if self.boundary_logits is not None:
            self.boundary_logits = self.boundary_logits[index]

    def forward(self, model, state: DecodeState) -> Forwarded:
        starts = incomplete_block_starts(state)  # every row's blocks before its start are finished
        begin = int(starts.min())
        stop = min(int(starts.max()) + state.block_size, state.canvas.shape[1])  # the furthest current block's end
        if model.facts.block_alignment == "absolute":  # Fast-dLLM v2's convention (one row at a time)
            if state.start <= begin < state.canvas.shape[1] and bool((state.canvas[:, begin] == state.mask_id).all()):
                return self._first_token(model, state, begin)
            if self.cache is None and begin > 0:  # the prompt's whole blocks first, as its prefill
                self._first_token(model, state, begin)
        window = dict(attention_mask=state.attention[:, :stop], past_key_values=self.cache, use_cache=True,
                      block_start=state.start)
        if self.cache is None:  # the prompt too; logits from the response (or its first block) on
            first = min(state.start, begin)
            window["past_key_values"] = self.cache = new_cache(model.config)
            out = model(state.canvas[:, :stop], position_ids=state.positions[:, :stop],
                        logits_to_keep=stop - first, **window)
        else:
            first = self.end
            out = model(state.canvas[:, first:stop], position_ids=state.positions[:, first:stop],
                        prev_logits=self.boundary_logits, **window)
        self.cache.crop(begin - stop)  # finished blocks stay; the current ones are computed again
        self.end, self.boundary_logits = begin, out.logits[:, begin - first]
        return out.logits, _span(first, out.logits.shape[1], len(state.canvas), state.canvas.device)

    def _first_token(self, model, state: DecodeState, begin: int) -> Forwarded:
        """Blocks aligned to position 0: the columns before block-start column `begin` (the
        finished block, or the prompt's whole blocks) into the cache, and the prediction of
        column `begin` from the last of them: a block's first token is the AR argmax, as
        Fast-dLLM v2's generate takes it."""
        lo = self.end if self.cache is not None else 0
        if self.cache is None:
            self.cache = new_cache(model.config)
        out = model(state.canvas[:, lo:begin], attention_mask=state.attention[:, :begin],
                    position_ids=state.positions[:, lo:begin], past_key_values=self.cache, use_cache=True,
                    logits_to_keep=1, block_start=state.start)
        self.end, self.boundary_logits = begin, out.last_logits
        return out.last_logits.unsqueeze(1), _span(begin, 1, len(state.canvas), state.canvas.device)


RUNS: dict[type[CachePolicy], type[NoCacheRun]] = {NoCache: NoCacheRun, PrefixCache: PrefixCacheRun,
                                                 DelayedCache: DelayedCacheRun, BlockCache: BlockCacheRun}


def open_cache(policy: CachePolicy) -> NoCacheRun:
    """The run-time half of `policy` for one decode (the tensors it keeps across iterations)."""
    if type(policy) not in RUNS:
        raise TypeError(f"cache policy {policy.name!r} has no diffusion-loop run (RUNS)")
    return RUNS[type(policy)](policy)
