"""The decode loop: batched prompts in, `DecodeOutput` out.

One loop serves every diffusion preset; what differs is configuration (`DecodeConfig`):
the selection strategy (strategies.py, applied by select.py), the block thresholds (state.py)
and the cache policy (policies.py, run by cache.py). Each iteration is one model forward (one NFE; a cached batch where some rows
refresh and others do not forwards the two groups apart, see `cache.py`):

    early stop -> update blocks -> forward (cache policy) -> score -> select -> commit

The cache policy says which canvas column each of its logits predicts, per row; the loop scores
and selects among the masked positions of created blocks found there. Every row decodes what it
decodes alone (greedy; up to float rounding from left padding): rows share forwards, not
decisions.

Autoregressive models take `_generate_ar` (next token, KV cache): a different algorithm, not a
variant of this loop, on the same `DecodeState`, so streaming and counts work the same; `ar-spec`
(prompt-lookup speculation, `speculative.py`) fills the same state from transformers' `generate`;
`d3llm-exact` (a block model's lossless self-speculation, `exact.py`) is another such algorithm.

Finished rows leave the batch: each iteration forwards only the rows that still have masks
(with their cache entries), so a batch whose rows stop at different lengths does not pay for
the finished ones.

Streaming: `on_step(state)` is called after every iteration with the unfinished rows (row `i`
of `state` is row `state.rows[i]` of the batch; a row is seen once finished before it leaves);
`final_prefix_lengths(state)` says how many response tokens of each row are final (the
contiguous committed prefix), which is what a streaming client may be sent. `on_step` may
return a (b,) bool tensor of rows whose answer is no longer wanted (delivered, or its client
left): they leave the batch as they are, and their output is whatever they had.

Counts follow docs/design.md: per row, generated tokens up to and including the first EOS;
NFE = forwards for the whole batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from d3llm.decode.cache import new_cache, open_cache
from d3llm.decode.config import DecodeConfig, for_facts
from d3llm.decode.exact import generate_exact
from d3llm.decode.select import current_block, score, select
from d3llm.decode.speculative import generate_ar_spec
from d3llm.decode.strategies import PromptLookup, SelfSpeculative
from d3llm.decode.state import NOT_YET, DecodeState, without_finished
from d3llm.errors import D3llmError
from d3llm.tensors import first_index


@dataclass
class DecodeOutput:
    sequences: list[list[int]]  # per row: response ids before the first EOS
    num_tokens: list[int]  # per row: generated tokens up to and including the first EOS
    nfe: int  # model forward calls for the whole batch
    row_forwards: list[int]  # per row: forwards made while that row was unfinished
    seconds: float  # wall time of the decode
    forward_seconds: float  # of which inside model forwards (the rest is decode overhead)
    trace: torch.Tensor | None = None  # (B, N) iteration that committed each position
    response: torch.Tensor | None = None  # (B, N) the whole response canvas, EOS tail included
    profile: dict[str, list] = field(default_factory=dict)  # kind -> [calls, columns, seconds] (_ForwardTimer)

    @property
    def tokens_per_forward(self) -> float:
        """TPF per sequence (as the paper counts it at batch 1): a batch of 8 sharing one
        forward does not make it 8x more parallel."""
        return sum(self.num_tokens) / max(sum(self.row_forwards), 1)


def _check(model, prompts: list[list[int]], config: DecodeConfig) -> DecodeConfig:
    """`config` as this model decodes with it (a block model's own block size), or an error."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise D3llmError("every prompt must hold at least one token")
    longest = max(len(p) for p in prompts) + config.max_new_tokens
    if longest > model.facts.max_length:
        raise D3llmError(
            f"prompt + `max_new_tokens` = {longest} tokens exceeds the model's maximum length "
            f"{model.facts.max_length}"
        )
    return for_facts(config, model.facts)


def final_prefix_lengths(state: DecodeState) -> torch.Tensor:
    """(B,) response tokens of each row that are final: committed, contiguous from the start,
    and not past the first EOS (which is included)."""
    committed = ~state.masked()
    prefix = committed.long().cumprod(1).sum(1)
    is_eos = (state.response == state.eos_id) & committed
    return torch.minimum(prefix, first_index(is_eos) + 1)


class _ForwardTimer:
    """Wall time inside model calls (synchronising the GPU so the time is the model's), and the
    profile by kind of forward: `full` (from column 0, no cache to read) or `window` (columns
    after a cache) -> [calls, columns forwarded (rows x columns), seconds]."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0
        self.device = model.device  # read once (the model's is looked up from its parameters)
        self.profile: dict[str, list] = {}
        self.sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

    def __call__(self, input_ids, *args, **kwargs):
        cache = kwargs.get("past_key_values")
        kind = "window" if cache is not None and cache.get_seq_length() > 0 else "full"
        started = time.perf_counter()
        out = self.model(input_ids, *args, **kwargs)
        self.sync()
        elapsed = time.perf_counter() - started
        self.seconds += elapsed
        entry = self.profile.setdefault(kind, [0, 0, 0.0])
        entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + input_ids.numel(), entry[2] + elapsed
        return out

    @property
    def facts(self):
        return self.model.facts

    @property
    def config(self):
        return self.model.config


@torch.no_grad()
def generate(
    model,
    prompts: list[list[int]],
    config: DecodeConfig,
    pad_token_id: int,
    on_step: Callable[[DecodeState], torch.Tensor | None] | None = None,
) -> DecodeOutput:
    """Decode a batch of tokenised prompts with `config`; `model` is a `d3llm.models.DiffusionLM`
    (decode/ does not import models/: models/catalog.py reads the decode rules)."""
    config = _check(model, prompts, config)
    started = time.perf_counter()
    timed = _ForwardTimer(model)
    if isinstance(config.strategy, PromptLookup):  # transformers' generate: its forwards are timed by hooks
        state, timed.seconds = generate_ar_spec(model, prompts, config, pad_token_id, on_step)
        states = [state]
    elif isinstance(config.strategy, SelfSpeculative):
        states = [generate_exact(timed, prompts, config, pad_token_id, on_step)]
    elif model.facts.block_alignment == "absolute":
        states = _generate_each_alone(timed, prompts, config, pad_token_id, on_step)
    else:
        run = _generate_ar if config.is_autoregressive else _generate_diffusion
        states = [run(timed, prompts, config, pad_token_id, on_step)]
    eos, width = model.facts.eos_token_id, max(s.num_new for s in states)
    response = torch.cat([_pad(s.response.cpu(), width, eos) for s in states])  # (B, N)
    trace = torch.cat([_pad(s.trace.cpu(), width, -1) for s in states])
    nfe = sum(s.step for s in states)
    row_forwards = torch.cat([s.row_forwards for s in states]).tolist()
    sequences, counts = _until_eos(response, model.facts.eos_token_id)
    return DecodeOutput(sequences, counts, nfe, row_forwards, time.perf_counter() - started, timed.seconds,
                        trace, response, timed.profile)


def _generate_each_alone(model, prompts, config, pad_id, on_step) -> list[DecodeState]:
    """A model whose blocks are aligned to position 0 (Fast-dLLM v2's checkpoints,
    docs/block-diffusion.md): each prompt has its own block geometry (its length modulo the
    block size) and, as the official generate, its own response length: the blocks that begin
    within `max_new_tokens` of the prompt's last whole block, and the first token of the next
    one. Rows decode one after the other, each its own state."""
    k = config.block_size
    done = []
    for row, prompt in enumerate(prompts):
        ends = (len(prompt) // k + config.max_new_tokens // k) * k + 1
        alone = config.override(max_new_tokens=ends - len(prompt))

        def seen_as_row(state, row=row):  # streaming: the row's index in the caller's batch
            state.rows = torch.full_like(state.rows, row)
            return on_step(state) if on_step else None

        done.append(_generate_diffusion(model, [prompt], alone, pad_id, seen_as_row if on_step else None,
                                        block_offset=len(prompt) % k))
    return done


def _pad(values: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """(B, n) -> (B, width), `fill` after the end."""
    return torch.cat([values, values.new_full((len(values), width - values.shape[1]), fill)], 1)


def _generate_diffusion(model, prompts, config, pad_id, on_step, block_offset: int = 0) -> DecodeState:
    """Decode until no row has masks. Rows leave the forward as soon as they finish, so a
    batch costs the work of its unfinished rows; the returned state holds every row."""
    facts = model.facts
    batch = DecodeState.start_from(prompts, config, facts.mask_token_id, facts.eos_token_id, pad_id, model.device,
                                   block_offset)
    state = batch  # the unfinished rows; written back into `batch` as they finish
    cache = open_cache(config.cache)
    generator = torch.Generator(device=model.device).manual_seed(config.seed) if config.temperature > 0 else None
    block_of = state.block_of()
    block_at = torch.cat([block_of, block_of.new_full((1,), state.num_blocks)])  # and one past the response
    sub_at = None  # the strategy's sub-blocks (`commit_window`): each response position's, and one past the end
    window = config.strategy.commit_window()
    if window:
        sub_of = state.sub_block_of(min(window, state.block_size))
        sub_at = torch.cat([sub_of, sub_of.new_full((1,), int(sub_of.max()) + 1)])
    unwanted = None  # rows the caller no longer needs (returned by `on_step`)
    reads = config.strategy.scores_read()
    while True:
        if config.early_stop is not None:
            state.apply_early_stop(keep_finished=True)
        state = without_finished(batch, state, cache, unwanted)
        if state is None:
            return batch
        state.update_blocks(config)
        logits, columns = cache.forward(model, state)  # logits[:, k] predicts canvas column columns[:, k]
        at = _response_positions(state, columns)  # (B, W); num_new where a logit predicts nothing
        candidates, in_current = _candidates(state, config, at, block_at[at], None if sub_at is None else sub_at[at])
        scores = score(logits, candidates, config.temperature, generator, facts.mask_token_id, reads)
        chosen = select(scores, candidates, in_current, config.strategy)
        assert bool((chosen.any(1) >= candidates.any(1)).all()), "every row with candidates must progress"
        state.commit(_to_response(chosen, at, state.num_new), _to_response(scores.tokens, at, state.num_new))
        if on_step:
            unwanted = on_step(state)


def _candidates(state: DecodeState, config: DecodeConfig, at: torch.Tensor, blocks: torch.Tensor,
                subs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, W) bool each: the positions at `at` (their blocks `blocks`, num_blocks one past the
    response) this iteration may commit, and those of them in the row's current block
    (`select.current_block`). Candidates are the masks of created blocks (with
    `stale_candidates`, also the columns early stop has just filled, as the authors' loops read
    them); with sub-blocks (`subs`, their ids at `at`), only the current block's first sub-block
    that still has masks."""
    masked = _gather(state.masked(), at)
    created = blocks < state.created.unsqueeze(1)
    stale = config.early_stop is not None and config.early_stop.stale_candidates
    candidates = (_gather(state.masked() | state.filled, at) if stale else masked) & created
    active = masked & created & _gather(state.fully_active, blocks)
    current = current_block(active, blocks)
    if subs is not None:
        none = torch.iinfo(subs.dtype).max  # a row without masks in its current block
        first_sub = subs.masked_fill(~(masked & (blocks == current)), none).amin(1, keepdim=True)
        candidates = candidates & (subs == first_sub)
    return candidates, candidates & (blocks == current)


def _response_positions(state: DecodeState, columns: torch.Tensor) -> torch.Tensor:
    """(B, W) response position of each canvas column in `columns`; `num_new` (one past the
    response) for the rest (-1, or the prompt)."""
    return (columns - state.start).masked_fill_(columns < state.start, state.num_new)


def _gather(values: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """(B, n) bool values at positions `at` (B, W); False at n (one past the end)."""
    return F.pad(values, (0, 1)).gather(1, at)


def _to_response(values: torch.Tensor, at: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n): `values` (B, W) written at response positions `at` (those one past the response
    dropped), zero (False) elsewhere."""
    return values.new_zeros(len(values), n + 1).scatter_(1, at, values)[:, :-1]


def _until_eos(response: torch.Tensor, eos_id: int) -> tuple[list[list[int]], list[int]]:
    sequences, counts = [], []
    for row in response.tolist():  # once per decode, on the CPU copy
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        sequences.append(row[: n - 1] if eos_id in row else row)
        counts.append(n)
    return sequences, counts


def _generate_ar(model, prompts, config, pad_id, on_step) -> DecodeState:
    """Greedy (or sampled) next-token decoding with a KV cache, one response column per
    forward. It keeps the same `DecodeState` as the diffusion loop (columns not generated yet
    count as masked), so counts, traces and `on_step` streaming are the same for both."""
    state = DecodeState.start_from(prompts, config, NOT_YET, model.facts.eos_token_id, pad_id, model.device)
    cache = new_cache(model.config)
    generator = torch.Generator(device=model.device).manual_seed(config.seed) if config.temperature > 0 else None
    start = state.start
    out = model(state.canvas[:, :start], attention_mask=state.attention[:, :start],
                position_ids=state.positions[:, :start], past_key_values=cache, use_cache=True, logits_to_keep=1)
    for column in range(state.num_new):
        token = score(out.last_logits.unsqueeze(1), None, config.temperature, generator, reads=()).tokens[:, 0]
        state.commit_column(column, token)
        unwanted = on_step(state) if on_step else None
        if unwanted is not None:
            state.stopped |= unwanted  # they write EOS from here on
        if bool(state.stopped.all()):
            break
        at = slice(start + column, start + column + 1)
        out = model(state.canvas[:, at], attention_mask=state.attention[:, : at.stop],
                    position_ids=state.positions[:, at], past_key_values=cache, use_cache=True, logits_to_keep=1)
    state.apply_early_stop()  # the columns after each row's EOS
    return state
