"""`d3llm-exact`: lossless self-speculative decoding of block-diffusion models.

A block model (docs/block-diffusion.md) is an AR network trained with a block-causal mask and
the AR shift. Run with a plain causal mask it is an AR model; given a block of masks after clean
text it drafts that block in one forward. Every forward here does both, with the same weights
(self-speculation; DFlash drafts with a separate model), so the output is the model's
greedy causal decode, token for token, in fewer forwards. A row's forward holds

    [ t0 | d1 .. dk | m1 .. mB ]

- t0: its last committed token, the one committed column the cache lacks (the first forward:
  the whole prompt);
- d1 .. dk: its drafts, guesses of the next k tokens; t0 and the drafts attend causally (to the
  cache and to each other): their outputs are the causal predictions of d1 .. dk and of the
  token after dk, which verify the drafts;
- m1 .. mB: masks from the first undrafted column to the end of the model's block that holds
  it; they attend to everything before them and to each other, as a block of masks does in
  training: the outputs at dk, m1 .. m(B-1) draft them.

The leading drafts equal to the causal argmax are accepted and committed with the argmax after
the last of them (the correction, or a bonus token when every draft is accepted). The cache keeps
the keys of t0 and the accepted drafts (computed causally: the AR model's own) and drops the
rest. The next drafts are the columns after the committed ones up to the end of the model's
block that holds the first of them: each its draft if it had one (a rejected draft is most often
a substitution, so the drafts behind it are kept), else this forward's prediction. The next
masks then fill the whole block after them, aligned as in training, and a forward is at most two
blocks and a column wide (docs/block-diffusion.md, "Exact decoding", measures these choices).

A row stops at its first EOS as greedy decoding does: tokens committed after it in the same
forward are overwritten with EOS (`apply_early_stop`), and the row leaves the batch. Rows of a
batch verify different numbers of drafts, so each keeps its own cache length (`held`); slots after
it are stale and never attended.

Exact in exact arithmetic; in floating point the causal logits of a forward of many columns
differ from the reference's one-column forwards by rounding, so an argmax could differ only at
a near-tie of that size (docs/block-diffusion.md, "Exact decoding": what is guaranteed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from d3llm.decode.cache import gather_slots, new_cache
from d3llm.decode.config import DecodeConfig
from d3llm.decode.state import NOT_YET, DecodeState, without_finished
from d3llm.tensors import first_index


@dataclass
class Speculation:
    """What a decode keeps between forwards, per row: `kv` holds the keys of its canvas columns
    [0, held) (slot k = column k), `drafts` (B, N) its guesses at the response columns right
    after its committed ones (NOT_YET elsewhere), `offset` where its response's first column sits
    in the model's block (0; blocks aligned to position 0, Fast-dLLM v2's checkpoints: its
    position modulo the block size)."""

    kv: DynamicCache
    held: torch.Tensor  # (B,)
    drafts: torch.Tensor  # (B, N)
    offset: torch.Tensor  # (B,)

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only rows `index` (finished rows leave the batch)."""
        self.kv.batch_select_indices(index)
        self.held, self.drafts, self.offset = self.held[index], self.drafts[index], self.offset[index]


@dataclass
class _Plan:
    """One forward's layout, per row, in response columns: [0, committed) committed, then drafts
    up to `drafted`, then masks up to `end` (the end of the model's block after the drafts);
    `past` slots in the cache before it."""

    committed: torch.Tensor  # (B,)
    drafted: torch.Tensor  # (B,)
    end: torch.Tensor  # (B,)
    past: int

    @classmethod
    def of(cls, state: DecodeState, spec: Speculation) -> "_Plan":
        committed = first_index(state.masked())  # the committed columns are a prefix
        drafted = committed + (spec.drafts != NOT_YET).sum(1)
        return cls(committed, drafted, _block_end(state, spec, drafted), spec.kv.get_seq_length())


def _block_end(state: DecodeState, spec: Speculation, column: torch.Tensor) -> torch.Tensor:
    """(B,) the end of the model's block that holds each row's response `column` (the canvas end
    at the latest)."""
    k = state.block_size
    return torch.clamp(((spec.offset + column) // k + 1) * k - spec.offset, max=state.num_new)


def generate_exact(model, prompts: list[list[int]], config: DecodeConfig, pad_id: int, on_step) -> DecodeState:
    """Greedy decoding by self-speculation (module docstring) until each row has its EOS or
    `max_new_tokens`; returns the state of every row, as the diffusion loop leaves it."""
    facts = model.facts
    batch = DecodeState.start_from(prompts, config, NOT_YET, facts.eos_token_id, pad_id, model.device)
    first = batch.positions[:, batch.start]
    offset = first % batch.block_size if facts.block_alignment == "absolute" else torch.zeros_like(first)
    spec = Speculation(new_cache(model.config), torch.zeros_like(first),
                       torch.full_like(batch.response, NOT_YET), offset)
    state, unwanted = batch, None
    while True:
        state.apply_early_stop()
        state = without_finished(batch, state, spec, unwanted)
        if state is None:
            return batch
        plan = _Plan.of(state, spec)
        _accept(state, spec, plan, _forward(model, state, spec, plan))
        if on_step:
            unwanted = on_step(state)


def _forward(model, state: DecodeState, spec: Speculation, plan: _Plan) -> torch.Tensor:
    """One forward of each row's canvas columns [held, start + end) (`_inputs`). Returns (B, N)
    the argmax at response columns [committed, end), NOT_YET elsewhere: up to `drafted` the
    causal prediction, after it the draft."""
    inputs = _inputs(state, spec, plan, model.facts.mask_token_id)
    width = inputs["input_ids"].shape[1]
    needed = int((state.start + plan.committed - spec.held).min())  # the first input whose (aligned) logits count
    out = model(**inputs, past_key_values=spec.kv, use_cache=True, logits_to_keep=width - needed)
    argmax = out.logits.argmax(-1)  # (B, width - needed): the token at input `needed` + i
    column = torch.arange(state.num_new, device=argmax.device)
    index = (state.start + column - spec.held[:, None] - needed).clamp(0, width - needed - 1)
    wanted = (column >= plan.committed[:, None]) & (column < plan.end[:, None])
    return torch.where(wanted, argmax.gather(1, index), NOT_YET)


def _inputs(state: DecodeState, spec: Speculation, plan: _Plan, mask_id: int) -> dict[str, torch.Tensor]:
    """The forward's inputs, as keyword arguments: each row's canvas columns from `held` (the
    committed ones the cache lacks) with its drafts and masks (`plan`), right-padded to the
    widest row; its cached slots and these columns in view, the causal ones causally, the masks
    bidirectionally (`column_blocks`)."""
    start, device = state.start, state.canvas.device
    column = torch.arange(state.num_new, device=device)
    response = torch.where(column < plan.committed[:, None], state.response,
                           torch.where(column < plan.drafted[:, None], spec.drafts, mask_id))
    stop = start + plan.end  # (B,) where each row's input ends
    width = int((stop - spec.held).max())
    at = spec.held[:, None] + torch.arange(width, device=device)  # (B, W) the canvas column of each input
    inside = at < stop[:, None]
    at = at.clamp(max=state.canvas.shape[1] - 1)
    cached = (torch.arange(plan.past, device=device) < spec.held[:, None]) & state.attention[:, : plan.past].bool()
    seen = inside & state.attention.gather(1, at).bool()
    # block ids: the cache 0; the causal columns one block each, in order; the masks one block after all of them
    causal = at < (start + plan.drafted)[:, None]
    order = torch.arange(1, width + 1, device=device).expand_as(at)
    blocks = torch.cat([torch.zeros_like(cached, dtype=torch.long), torch.where(causal, order, width + 1)], 1)
    return dict(input_ids=torch.cat([state.canvas[:, :start], response], 1).gather(1, at),
                attention_mask=torch.cat([cached, seen], 1).long(), position_ids=state.positions.gather(1, at),
                column_blocks=blocks)


def _accept(state: DecodeState, spec: Speculation, plan: _Plan, predicted: torch.Tensor) -> None:
    """Commit each row's drafts that agree with the causal argmax (`predicted`), and the argmax
    after them; keep the keys of the columns now committed but the last. The guesses after them
    up to the end of the block that holds the next column become the next drafts, so the next
    masks fill the block after it: a forward is never wider than two blocks and a column."""
    committed, end = plan.committed, plan.end
    column = torch.arange(state.num_new, device=end.device)
    drafts = spec.drafts
    agrees = (column < committed[:, None]) | ((drafts == predicted) & (drafts != NOT_YET))
    last = agrees.long().cumprod(1).sum(1)  # (B,) the column after the accepted drafts: committed from the argmax
    state.commit((column >= committed[:, None]) & (column <= last[:, None]), predicted)
    guesses = torch.where(drafts != NOT_YET, drafts, predicted)
    upto = torch.minimum(end, _block_end(state, spec, last + 1))
    spec.drafts = torch.where((column > last[:, None]) & (column < upto[:, None]), guesses, NOT_YET)
    _keep_causal_keys(spec, state.start + last, plan.past)


def _keep_causal_keys(spec: Speculation, held: torch.Tensor, past: int) -> None:
    """Each row keeps its cached slots and the forward's keys of its columns before `held`
    (its last committed column, which the next forward holds); the keys of the drafts after
    them and of the masks leave. Slot k stays column k: rows whose forwards started at
    different slots are gathered, else the cache is cut."""
    total, keep = spec.kv.get_seq_length(), int(held.max())
    if bool((spec.held == past).all()):
        spec.kv.crop(keep - total)
    else:
        slot = torch.arange(keep, device=held.device)
        source = torch.where(slot < spec.held[:, None], slot, past + slot - spec.held[:, None])
        gather_slots(spec.kv, source.clamp(max=total - 1))
    spec.held = held
