"""Exact under batching: a batch decodes what each of its prompts decodes alone, for
every diffusion preset (the cached ones too: each row has its own cache and refreshes), and
the caches compute what they must.

For LLaDA/Dream no cache policy equals the uncached decode in general: a cached key was
computed while later columns were still masked. What is exact, and tested here:
- a cached forward over a canvas that did not change since the cache was built equals the
  full forward, whatever each row's cache holds and whichever rows refresh;
- with one layer, keys and values of a column depend on its token and position only, and the
  prefix, delayed and dual caches hold only columns whose token does not change while cached:
  for LLaDA (no logit shift) these decodes then equal the uncached ones (Dream's shifted
  prediction at the cache boundary is read from the cache's last column, so not for Dream).
"""

import pytest
import torch

from d3llm.decode import DecodeConfig, generate, preset
from d3llm.decode.cache import NoCacheRun, open_cache
from d3llm.decode.policies import DelayedCache, NoCache, PrefixCache
from d3llm.decode.state import DecodeState
from tests.conftest import toy_model

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15], [20, 21, 22, 23, 24, 25, 26, 27, 28], [30]]
PAD = 0
# Thresholds at which the toy models (seed 2; 24 tokens, blocks of 4) mix threshold commits
# with forced ones, and rows finish at different iterations.
CONFIDENCE = {"llada": 0.6, "dream": 0.3}
ENTROPY = {"llada": 1.5, "dream": 1.8}
SHORT_ENTROPY = {"llada": 1.5, "dream": 2.0}  # the same, forwards ending at the last created block


def configs(family: str) -> dict[str, DecodeConfig]:
    c, e, short = CONFIDENCE[family], ENTROPY[family], SHORT_ENTROPY[family]
    return {"vanilla": preset("vanilla"), "fast-dllm": preset("fast-dllm", threshold=c),
            "fast-dllm-dual": preset("fast-dllm-dual", threshold=c), "dparallel": preset("dparallel", threshold=e),
            "d3llm": preset("d3llm", threshold=e), "d3llm-cache": preset("d3llm-cache", threshold=e),
            "d3llm-cache/refresh 3": preset("d3llm-cache", threshold=e, refresh_interval=3),
            "d3llm-cache/delay 2": preset("d3llm-cache", threshold=e, cache_delay=2),
            "d3llm-cache/window refresh": preset("d3llm-cache", threshold=e, cache_delay=2, refresh_while_waiting=False),
            "d3llm/created only": preset("d3llm", threshold=short, future_masks="skip"),
            "d3llm-cache/created only": preset("d3llm-cache", threshold=short, cache_delay=2, future_masks="skip"),
            "d3llm-cache/uncreated cached": preset("d3llm-cache", threshold=e, cache_delay=2, future_masks="cached")}


METHODS = list(configs("llada"))
# Methods where some iterations refresh some rows and read the others' caches (two forwards).
SPLIT = {"fast-dllm", "fast-dllm-dual", "d3llm-cache", "d3llm-cache/refresh 3", "d3llm-cache/delay 2",
         "d3llm-cache/created only", "d3llm-cache/uncreated cached"}


def recording(model) -> list[int]:
    """Record the width of every forward of `model` (its input columns)."""
    widths, forward = [], model.forward

    def record(input_ids, *args, **kwargs):
        widths.append(input_ids.shape[1])
        return forward(input_ids, *args, **kwargs)

    model.forward = record
    return widths


def mixes_commits(trace: torch.Tensor) -> bool:
    """Some forward committed one position of a row, and some committed several."""
    counts = {int((row == step).sum()) for row in trace for step in row.unique()}
    return 1 in counts and max(counts) > 1


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_a_batch_decodes_what_each_prompt_decodes_alone(family, method):
    model = toy_model(family, seed=2)
    config = configs(family)[method].override(max_new_tokens=24, block_size=4)
    widths = recording(model)
    batch = generate(model, PROMPTS, config, PAD)
    batch_widths = list(widths)
    for i, prompt in enumerate(PROMPTS):
        alone = generate(model, [prompt], config, PAD)
        assert alone.sequences[0] == batch.sequences[i]
        assert alone.num_tokens[0] == batch.num_tokens[i] and alone.row_forwards[0] == batch.row_forwards[i]
        assert torch.equal(alone.trace[0], batch.trace[i])
    if method != "vanilla":  # threshold and forced commits; rows at different places
        assert mixes_commits(batch.trace) and len(set(batch.row_forwards)) > 1
    if config.cache.name != "none":  # cached forwards ran, and (SPLIT) forwards of refreshing rows beside them
        assert min(batch_widths) < max(map(len, PROMPTS)) + 24
        assert (len(batch_widths) > batch.nfe) == (method in SPLIT)
    if config.cache.future_masks == "skip":  # the first forward: the prompt and the one created block
        assert batch_widths[0] == max(map(len, PROMPTS)) + 4


# One prompt alone, as recorded (float64, toy seed 2, prompt [8, 9, 10, 11, 12, 13], 16 tokens in
# blocks of 4): (trace, response). A change here is a change of what the presets decode: the LLaDA
# rows follow the authors' LLaDA forcing (block+global) and early stop (tests/equivalence/official).
RECORDED = {
    ("llada", "vanilla"): ([0, 1, 3, 2, 4, 5, 6, 7, 11, 10, 9, 8, 12, 14, 15, 13], [17, 17] + [34] * 14),
    ("llada", "fast-dllm"): ([0, 1, 3, 2, 4, 5, 6, 7, 8, 8, 8, 8, 9, 9, 9, 9], [17, 17] + [34] * 14),
    ("llada", "fast-dllm-dual"): ([0, 1, 3, 2, 4, 5, 6, 7, 8, 8, 8, 8, 9, 9, 9, 9], [17, 17] + [34] * 14),
    ("llada", "dparallel"): ([0, 1, 2, 3, 6, 4, 5, 7, 10, 10, 9, 8, 11, 11, 11, 11], [17, 17] + [34] * 14),
    ("llada", "d3llm"): ([0, 1, 2, 3, 5, 3, 4, 6, 8, 8, 7, 6, 8, 8, 8, 8], [17, 17] + [34] * 14),
    ("llada", "d3llm-cache"): ([0, 1, 2, 3, 5, 3, 4, 6, 8, 8, 7, 6, 8, 8, 8, 8], [17, 17] + [34] * 14),
    ("llada", "d3llm-cache/refresh 3"): ([0, 1, 2, 3, 5, 3, 4, 6, 8, 8, 7, 6, 8, 8, 8, 8], [17, 17] + [34] * 14),
    ("llada", "d3llm-cache/delay 2"): ([0, 1, 2, 3, 5, 3, 4, 6, 8, 8, 7, 6, 8, 8, 8, 8], [17, 17] + [34] * 14),
    ("dream", "vanilla"): ([0, 2, 1, 3, 4, 5, 6, 7, 10, 8, 9, 11, 12, 13, 14, 15],
                           [30, 41, 0, 30, 41, 5, 27, 62, 53, 27, 62, 53, 56, 26, 25, 14]),
    ("dream", "fast-dllm"): ([0, 0, 0, 0, 2, 1, 1, 1, 3, 3, 3, 3, 4, 4, 4, 4],
                             [30, 0, 0, 0, 30, 0, 0, 0, 27, 0, 0, 0, 27, 27, 27, 27]),
    ("dream", "fast-dllm-dual"): ([0, 0, 0, 0, 2, 1, 1, 1, 3, 3, 3, 3, 4, 4, 4, 4],
                                  [30, 0, 0, 0, 30, 0, 0, 0, 27, 0, 0, 0, 27, 27, 27, 27]),
    ("dream", "dparallel"): ([0, 3, 1, 2, 7, 6, 5, 4, 8, 9, 11, 10, 12, 15, 14, 13],
                             [30, 41, 0, 30, 41, 0, 0, 0, 27, 62, 53, 27, 62, 42, 27, 27]),
    ("dream", "d3llm"): ([0, 3, 1, 2, 7, 6, 5, 4, 8, 9, 11, 10, 11, 14, 13, 12],
                         [30, 41, 0, 30, 41, 0, 0, 0, 27, 62, 53, 27, 62, 42, 27, 27]),
    ("dream", "d3llm-cache"): ([0, 3, 1, 2, 7, 6, 5, 4, 8, 9, 11, 10, 11, 14, 13, 12],
                               [30, 41, 0, 30, 41, 0, 0, 0, 27, 62, 53, 27, 62, 42, 27, 27]),
    ("dream", "d3llm-cache/refresh 3"): ([0, 3, 1, 2, 7, 6, 5, 4, 8, 9, 11, 10, 11, 14, 13, 12],
                                         [30, 41, 0, 30, 41, 0, 0, 0, 27, 62, 53, 27, 62, 42, 27, 27]),
    ("dream", "d3llm-cache/delay 2"): ([0, 3, 1, 2, 7, 6, 5, 4, 8, 9, 11, 10, 11, 14, 13, 12],
                                       [30, 41, 0, 30, 41, 0, 0, 0, 27, 62, 53, 27, 62, 42, 27, 27]),
}


@pytest.mark.parametrize("family, method", list(RECORDED))
def test_one_prompt_decodes_as_recorded(family, method):
    model = toy_model(family, seed=2).double()
    config = configs(family)[method].override(max_new_tokens=16, block_size=4)
    out = generate(model, [[8, 9, 10, 11, 12, 13]], config, PAD)
    assert (out.trace[0].tolist(), out.response[0].tolist()) == RECORDED[family, method]


@pytest.mark.parametrize("cached, uncached", [("fast-dllm", "fast-dllm"), ("fast-dllm-dual", "fast-dllm"),
                                              ("d3llm-cache", "d3llm"), ("d3llm-cache/refresh 3", "d3llm"),
                                              ("d3llm-cache/delay 2", "d3llm"),
                                              ("d3llm-cache/window refresh", "d3llm"),
                                              ("d3llm-cache/created only", "d3llm/created only"),
                                              ("d3llm-cache/uncreated cached", "d3llm")])
def test_one_layer_llada_caches_equal_no_cache_over_a_whole_decode(cached, uncached):
    model = toy_model("llada", seed=2, num_layers=1)
    threshold = {"confidence": 0.5, "entropy": 1.5}
    config = configs("llada")[cached].override(max_new_tokens=24, block_size=4)
    config = config.override(threshold=threshold[config.strategy.name])
    # the same decode without a cache (with `skip`, its forwards ending at the last created block too)
    reference = config.override(method=uncached, cache=NoCache(config.cache.future_masks.replace("cached", "forward")))
    widths = recording(model)
    out = generate(model, PROMPTS, config, PAD)
    assert min(widths) < max(map(len, PROMPTS)) + 24  # the cache was read
    plain = generate(model, PROMPTS, reference, PAD)
    assert mixes_commits(plain.trace)
    assert out.sequences == plain.sequences and torch.equal(out.trace, plain.trace)
    assert out.row_forwards == plain.row_forwards


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_without_refresh_while_waiting_only_the_forwards_before_the_prompt_is_cached_are_full(family):
    """`refresh_while_waiting=False`: a completed block no longer makes its row forward the whole
    canvas; the row forwards from its cache on, which grows as blocks settle. Only the forwards
    before the prompt enters the cache (`cache_delay` of them) are full."""
    model = toy_model(family, seed=2)
    config = configs(family)["d3llm-cache/delay 2"].override(max_new_tokens=24, block_size=4)
    official = generate(model, [PROMPTS[1]], config, PAD)
    lean = generate(model, [PROMPTS[1]], config.override(refresh_while_waiting=False), PAD)
    assert official.profile["full"][0] > 2 and lean.profile["full"][0] == 2
    assert lean.nfe == lean.profile["full"][0] + lean.profile["window"][0]


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cached_uncreated_masks_narrow_the_windows(family):
    """`future_masks="cached"`: after the first forward, no forward reaches the canvas end unless it
    refreshes, and fewer columns are forwarded in all."""
    model = toy_model(family, seed=2)
    config = configs(family)["d3llm-cache/delay 2"].override(max_new_tokens=24, block_size=4)
    widths = recording(model)
    generate(model, [PROMPTS[1]], config, PAD)
    official, widths[:] = list(widths), []
    lean = generate(model, [PROMPTS[1]], config.override(future_masks="cached"), PAD)
    full = len(PROMPTS[1]) + 24
    assert sum(widths) < sum(official)
    assert widths.count(full) == lean.profile["full"][0] and len(widths) > widths.count(full)


def complete_block(state: DecodeState, row: int, block: int) -> None:
    """Commit block `block` of `row` (token 20), completed at the current iteration; the block
    after it is created, as the loop's `update_blocks` would before the next forward."""
    begin = block * state.block_size
    state.response[row, begin : begin + state.block_size] = 20
    state.completed_at[row, block] = state.step
    state.created[row] = max(int(state.created[row]), min(block + 2, state.num_blocks))


def assert_equals_full_forward(model, state: DecodeState, cache) -> None:
    """`cache.forward` gives, at every column it predicts, the uncached forward's logits."""
    full, _ = NoCacheRun(NoCache()).forward(model, state)
    logits, columns = cache.forward(model, state)
    rows, k = (columns >= state.start).nonzero(as_tuple=True)
    assert set(rows.tolist()) == set(range(len(columns)))  # every row gets logits
    torch.testing.assert_close(logits[rows, k], full[rows, columns[rows, k] - state.start], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("policy", [PrefixCache(), DelayedCache(), PrefixCache(future_masks="cached"),
                                    DelayedCache(future_masks="cached")], ids=lambda p: f"{p.name}-{p.future_masks}")
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cached_forwards_over_an_unchanged_canvas_are_exact(policy, family):
    """Rows with different cache boundaries (and a shorter last block) share one padded cache;
    one row refreshes while the others read their caches; then all read them again. Rows whose
    canvas did not change since their cache was built get the full forward's logits, including
    Dream's shifted prediction at each row's cache boundary."""
    model = toy_model(family, seed=4)
    config = DecodeConfig(max_new_tokens=10, block_size=4)  # blocks of 4, 4 and 2
    state = DecodeState.start_from(PROMPTS, config, model.facts.mask_token_id, model.facts.eos_token_id, PAD,
                                   model.device)
    for row, blocks in enumerate([1, 2, 0, 1, 2]):
        for block in range(blocks):
            complete_block(state, row, block)
    state.step = 1
    cache = open_cache(policy)
    widths = recording(model)
    assert_equals_full_forward(model, state, cache)  # builds the caches
    state.step = 2
    complete_block(state, 2, 0)  # row 2 refreshes (its canvas changed), the others read their caches
    assert_equals_full_forward(model, state, cache)
    state.step = 5  # (the delayed cache: every block seen and settled by now, docs/method.md section 4)
    assert_equals_full_forward(model, state, cache)  # every row reads its cache
    canvas = state.canvas.shape[1]
    # (NoCache, build), (NoCache, row 2 refreshing, the others cached), (NoCache, all cached)
    assert widths[:4] == [canvas] * 4 and widths[4] < canvas and widths[5] == canvas and widths[6] < canvas
    assert len(widths) == 7
