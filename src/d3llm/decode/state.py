"""Per-row decoding state of a batch, held in tensors.

The canvas is `[left padding, prompt, response]`; every row's response occupies the same
columns `start .. start + N`. The response is cut into blocks of `block_size` (the last may be
shorter). Block life cycle (docs/method.md section 3):

    not created -> created (commits only under the threshold) -> fully active (also forced
    progress) -> complete (no masks) -> cached (decided by the cache policy)

`created` counts the created blocks of each row (blocks are created in order), `fully_active`
and `completed_at` are (B, nb) tensors; progress and completeness are derived from the canvas,
so there is no second copy of the truth to keep in sync. What the masks say (`Tally`: masked
positions, block progress, rows with masks) is computed once per canvas: `_write`, the loop's
one write path, leaves the tally of the canvas it writes, and every other write drops it (code
that writes `canvas` itself calls `canvas_changed`).

Finished rows leave the batch (`select`): the loop forwards only the rows that still have
masks, and `rows` names each remaining row's index in the batch it started as.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from functools import cached_property

import torch
import torch.nn.functional as F

from d3llm.decode.config import DecodeConfig
from d3llm.tensors import first_index


NOT_YET = -1  # the AR decoders' "masked" value: a response column not generated yet (never fed to the model)


@dataclass(frozen=True, eq=False)
class Tally:
    """What a canvas's masks say: per position, per block and per row (`DecodeState.tally`)."""

    masked: torch.Tensor  # (B, N) bool: response positions still masked
    progress: torch.Tensor  # (B, nb) fraction of each block committed
    has_masks: torch.Tensor  # (B,) bool: rows with a masked position

    def select(self, index: torch.Tensor) -> "Tally":
        return Tally(self.masked[index], self.progress[index], self.has_masks[index])


@dataclass
class DecodeState:
    canvas: torch.Tensor  # (B, start + N) token ids
    attention: torch.Tensor  # (B, start + N) 1 on real tokens, 0 on left padding
    positions: torch.Tensor  # (B, start + N) true position ids
    start: int  # first response column
    block_size: int
    mask_id: int
    eos_id: int
    created: torch.Tensor  # (B,) number of created blocks
    fully_active: torch.Tensor  # (B, nb) bool
    completed_at: torch.Tensor  # (B, nb) iteration at which the block became complete, -1 if not
    stopped: torch.Tensor  # (B,) bool: an EOS was committed; its tail is filled (AR: at the end)
    filled: torch.Tensor  # (B, N) bool: masks the last `apply_early_stop` filled with EOS
    # (B,) the first block early stop created (all wholly after the EOS), num_blocks if none yet
    stop_created_from: torch.Tensor
    trace: torch.Tensor  # (B, N) iteration at which each response position was committed, -1 if not
    row_forwards: torch.Tensor  # (B,) iterations each row took part in while unfinished
    rows: torch.Tensor  # (B,) index of each row in the batch the decode started with
    step: int = 0  # iterations (= batch forwards) so far
    # response columns before the first block boundary that belong to the prompt's last block
    # (absolute block alignment, docs/block-diffusion.md; 0: blocks start at the response)
    block_offset: int = 0
    # early stop writes EOS over the columns after the first EOS (d3LLM); False: leaves them, and
    # a row is finished once every column before its first EOS is committed (Fast-dLLM v2)
    fill_after_eos: bool = True
    # the tally of the canvas as it is (None: not known; `tally` computes it)
    _tally: Tally | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def start_from(cls, prompts: list[list[int]], config: DecodeConfig, mask_id: int, eos_id: int,
                   pad_id: int, device: torch.device, block_offset: int = 0) -> "DecodeState":
        width, n = max(len(p) for p in prompts), config.max_new_tokens
        canvas = torch.tensor([[pad_id] * (width - len(p)) + list(p) + [mask_id] * n for p in prompts])
        attention = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + n) for p in prompts])
        nb = -(-(n + block_offset) // config.block_size)
        batch = len(prompts)
        state = cls(
            canvas=canvas.to(device), attention=attention.to(device),
            positions=(attention.cumsum(1) - 1).clamp(min=0).to(device), start=width,
            block_size=config.block_size, mask_id=mask_id, eos_id=eos_id,
            created=torch.ones(batch, dtype=torch.long, device=device),
            fully_active=torch.zeros(batch, nb, dtype=torch.bool, device=device),
            completed_at=torch.full((batch, nb), -1, dtype=torch.long, device=device),
            stopped=torch.zeros(batch, dtype=torch.bool, device=device),
            filled=torch.zeros(batch, n, dtype=torch.bool, device=device),
            stop_created_from=torch.full((batch,), nb, dtype=torch.long, device=device),
            trace=torch.full((batch, n), -1, dtype=torch.long, device=device),
            row_forwards=torch.zeros(batch, dtype=torch.long, device=device),
            rows=torch.arange(batch, device=device), block_offset=block_offset,
            fill_after_eos=config.early_stop is None or config.early_stop.fill_after_eos is not False,
        )
        state.fully_active[:, 0] = True  # block 0's predecessor, the prompt, is complete
        return state

    # --- geometry ------------------------------------------------------------------------

    @property
    def num_new(self) -> int:
        return self.canvas.shape[1] - self.start

    @property
    def num_blocks(self) -> int:
        return self.fully_active.shape[1]

    @property
    def response(self) -> torch.Tensor:
        """(B, N) a view of the canvas's response columns (made once per canvas tensor)."""
        held = self.__dict__.get("_response_of")
        if held is None or held[0] is not self.canvas:
            held = self.__dict__["_response_of"] = (self.canvas, self.canvas[:, self.start :])
        return held[1]

    def block_of(self) -> torch.Tensor:
        """(N,) block index of each response position."""
        return self._block_of

    @cached_property
    def _block_of(self) -> torch.Tensor:  # geometry: computed once per state object
        return (self.columns + self.block_offset) // self.block_size

    @cached_property
    def columns(self) -> torch.Tensor:
        """(N,) 0 .. N - 1: the response positions."""
        return torch.arange(self.num_new, device=self.canvas.device)

    @cached_property
    def block_ids(self) -> torch.Tensor:
        """(nb,) 0 .. nb - 1."""
        return torch.arange(self.num_blocks, device=self.canvas.device)

    def block_begins(self) -> torch.Tensor:
        """(nb + 1,) canvas column where each block begins (block 0: where its absolute block
        begins, in the prompt when `block_offset` > 0), and the canvas end."""
        return self._block_begins

    @cached_property
    def _block_begins(self) -> torch.Tensor:  # geometry: computed once per state object
        begins = self.start - self.block_offset + torch.arange(self.num_blocks + 1, device=self.canvas.device) * self.block_size
        return begins.clamp(max=self.canvas.shape[1])

    def sub_block_of(self, size: int) -> torch.Tensor:
        """(N,) index of each response position's sub-block: blocks cut into pieces of `size`
        columns from their (absolute) first column, numbered across blocks."""
        within = (torch.arange(self.num_new, device=self.canvas.device) + self.block_offset) % self.block_size
        return self.block_of() * -(-self.block_size // size) + within // size

    @cached_property
    def _block_lengths(self) -> torch.Tensor:
        """(nb,) response positions in each block (the first and the last may be shorter)."""
        begins = self.block_begins()
        return begins[1:] - begins[:-1].clamp(min=self.start)

    def per_block(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a (B, N) tensor per block -> (B, nb)."""
        out = torch.zeros(values.shape[0], self.num_blocks, dtype=values.dtype, device=values.device)
        return out.index_add_(1, self.block_of(), values)

    # --- derived state -------------------------------------------------------------------

    def tally(self) -> Tally:
        """The masks of the canvas as it is, computed once per canvas (module docstring). Read
        only: the tensors are shared by every caller until the next write."""
        if self._tally is None:
            masked = self.response == self.mask_id
            progress = 1 - self.per_block(masked.long()) / self._block_lengths
            self._tally = Tally(masked, progress, masked.any(1))
        return self._tally

    def canvas_changed(self) -> None:
        """Forget what was derived from the canvas: for code that writes `canvas` (or
        `response`) directly rather than by the state's methods."""
        self._tally = None

    def masked(self) -> torch.Tensor:
        """(B, N) bool: response positions still masked."""
        return self.tally().masked

    def progress(self) -> torch.Tensor:
        """(B, nb) fraction of each block committed."""
        return self.tally().progress

    def is_created(self) -> torch.Tensor:
        """(B, nb) bool."""
        return self.block_ids < self.created.unsqueeze(1)

    def created_end(self) -> torch.Tensor:
        """(B,) canvas column where each row's created blocks end."""
        return (self.start - self.block_offset + self.created * self.block_size).clamp(max=self.canvas.shape[1])

    def row_finished(self) -> torch.Tensor:
        """(B,) bool: rows without masks (without `fill_after_eos`: before their first EOS)."""
        if self.fill_after_eos:
            return ~self.tally().has_masks
        masked = self.masked() & (self.columns < first_index(self.response == self.eos_id).unsqueeze(1))
        return ~masked.any(1)

    # --- rows leaving the batch ----------------------------------------------------------

    def select(self, index: torch.Tensor) -> "DecodeState":
        """The state of rows `index` only (every per-row tensor indexed, the rest shared)."""
        part = replace(self, **{name: getattr(self, name)[index] for name in PER_ROW})
        if self._tally is not None:
            part._tally = self._tally.select(index)
        return part

    def write_back(self, part: "DecodeState") -> None:
        """Copy the rows of `part` (a `select` of this state, at any later step) into this one."""
        at = part.rows
        for name in PER_ROW:
            getattr(self, name)[at] = getattr(part, name)
        self.step = max(self.step, part.step)
        self.canvas_changed()

    # --- transitions ---------------------------------------------------------------------

    def apply_early_stop(self, keep_finished: bool = False) -> None:
        """Rows with a committed EOS: every position after the first EOS becomes EOS, committed
        ones included, and no block after it is created (all blocks then exist, with the tail
        already filled). With `keep_finished` (the diffusion loop), a row without masks is left
        as it is: the authors' loops end before their early stop once nothing is masked, so
        tokens committed after an EOS that came last stay. `filled` records the masks it filled.
        Without `fill_after_eos` it only marks the rows `stopped` (`row_finished` reads the EOS)."""
        is_eos = self.response == self.eos_id
        if keep_finished:
            is_eos &= self.tally().has_masks.unsqueeze(1)
        if not bool(is_eos.any()):  # nothing to fill; `filled` is all False (only rows with an EOS fill)
            return
        has_eos = is_eos.any(1)
        if not self.fill_after_eos:
            self.stopped |= has_eos
            return
        fill = (is_eos.cumsum(1) > 0) & ~is_eos  # after the first EOS
        self.filled = fill & self.masked()
        if bool(fill.any()):
            self._write(fill, self.eos_id)
        newly = has_eos > self.stopped
        if bool(newly.any()):
            self.stop_created_from = torch.where(newly, self.created, self.stop_created_from)
            self.stopped |= has_eos
            self.created = torch.where(has_eos, self.num_blocks, self.created)

    def update_blocks(self, config: DecodeConfig) -> None:
        """Creation of at most one new block per row (when its last created block reaches
        `block_add_threshold`), then activation: every created block whose predecessor reached
        `block_activate_threshold` is fully active (block 0 always)."""
        progress = self.progress()
        last_progress = progress.gather(1, (self.created - 1).unsqueeze(1)).squeeze(1)
        self.created = (self.created + (last_progress >= config.block_add_threshold)).clamp(max=self.num_blocks)
        # block 0's predecessor, the prompt, is complete
        predecessor_done = F.pad(progress[:, :-1] >= config.block_activate_threshold, (1, 0), value=True)
        self.fully_active |= self.is_created() & predecessor_done

    def commit(self, chosen: torch.Tensor, tokens: torch.Tensor) -> None:
        """Write `tokens` (B, N) at `chosen` (B, N) positions; end the iteration."""
        self.row_forwards += self.tally().has_masks  # rows this forward was needed for
        self._write(chosen, tokens)
        self.step += 1

    def commit_column(self, column: int, tokens: torch.Tensor) -> None:
        """An autoregressive step: `tokens` (B,) at response `column`. Rows that already wrote
        EOS get EOS; `stopped` marks a written EOS (`apply_early_stop` fills the rest at the end).
        Cheaper than `commit`, which an AR step would pay for on every token."""
        live = ~self.stopped
        self.row_forwards += live.long()
        self.response[:, column] = torch.where(live, tokens, self.eos_id)
        self.trace[:, column] = self.step
        self.stopped |= tokens == self.eos_id
        self.step += 1
        self.canvas_changed()

    def _write(self, where: torch.Tensor, tokens: torch.Tensor | int) -> None:
        """The one place response tokens are written: keeps trace and completion times, and
        leaves the tally of the canvas it writes."""
        if isinstance(tokens, int):
            self.response.masked_fill_(where, tokens)
        else:
            self.response.copy_(torch.where(where, tokens, self.response))
        self.trace = self.trace.masked_fill(where, self.step)
        self._tally = None
        now_complete = self.tally().progress >= 1  # blocks only complete here, and stay complete
        self.completed_at = self.completed_at.masked_fill(now_complete & (self.completed_at < 0), self.step)


PER_ROW = tuple(f.name for f in fields(DecodeState) if f.type == "torch.Tensor")  # indexed by `select`


def without_finished(batch: DecodeState, state: DecodeState, cache, unwanted: torch.Tensor | None):
    """Write the rows of `state` that are finished (or `unwanted`) back into `batch`; return
    the state of the others (dropped from `cache` too, by its `select_rows`), or None when no
    row is left."""
    done = state.row_finished() if unwanted is None else state.row_finished() | unwanted
    finished = int(done.sum())
    if finished == 0:
        return state
    if finished == len(done):
        if state is not batch:
            batch.write_back(state)
        return None
    batch.write_back(state.select(done))
    keep = (~done).nonzero().flatten()
    cache.select_rows(keep)
    return state.select(keep)
