"""The decode engine: equivalences that must hold exactly, and the block mechanics (batches
and caches: test_batch_exact.py)."""

import pytest
import torch

from d3llm.decode import final_prefix_lengths, generate, preset
from tests.conftest import VOCAB, toy_model

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14, 15]]
PAD = 0
# Thresholds at which these toy models (seed 2) mix threshold commits with forced ones: row
# forwards land between 6 and 12 for 12 tokens, so the tests see both kinds of decision.
MIXED = {"llada": 1.5, "dream": 1.8}


def reference_vanilla(model, prompt, max_new_tokens, block_size, rank_by="confidence"):
    """LLaDA's vanilla decoder written plainly, one row, one token per forward (Dream's
    teacher rule with `rank_by="entropy"`: the lowest-entropy position first; `"position"`:
    the leftmost)."""
    mask = model.facts.mask_token_id
    x = torch.tensor([prompt + [mask] * max_new_tokens])
    start = len(prompt)
    for block_start in range(start, x.shape[1], block_size):
        block_end = min(block_start + block_size, x.shape[1])
        while (x[0, block_start:block_end] == mask).any():
            probs = torch.softmax(model(x).logits[0, block_start:block_end].float(), -1)
            confidence, token = probs.max(-1)
            if rank_by == "entropy":
                confidence = (probs * probs.log()).sum(-1)  # minus the entropy
            if rank_by == "position":
                confidence = -torch.arange(block_end - block_start).float()
            confidence[x[0, block_start:block_end] != mask] = float("-inf")
            i = int(confidence.argmax())
            x[0, block_start + i] = token[i]
    return x[0, start:].tolist()


@pytest.mark.parametrize("rank_by", ["confidence", "entropy", "position"])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_vanilla_equals_the_plain_reference(family, rank_by):
    model = toy_model(family)
    for prompt in PROMPTS:
        config = preset("vanilla", max_new_tokens=10, block_size=4, rank_by=rank_by)
        out = generate(model, [prompt], config, PAD)
        expected = reference_vanilla(model, prompt, 10, 4, rank_by)
        eos = model.facts.eos_token_id
        assert out.sequences[0] == (expected[: expected.index(eos)] if eos in expected else expected)


def test_multi_block_with_thresholds_at_one_is_single_block_entropy_decoding():
    model = toy_model("llada", seed=2)
    single = generate(model, PROMPTS, preset("dparallel", threshold=MIXED["llada"], max_new_tokens=12, block_size=4), PAD)
    multi = generate(model, PROMPTS, preset("d3llm", threshold=MIXED["llada"], max_new_tokens=12, block_size=4,
                                            block_add_threshold=1.0, block_activate_threshold=1.0,
                                            early_stop=False), PAD)
    assert torch.equal(single.trace, multi.trace) and single.sequences == multi.sequences


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_delayed_cache_refreshing_every_step_equals_no_cache(family):
    model = toy_model(family, seed=2)
    base = preset("d3llm", threshold=MIXED[family], max_new_tokens=12, block_size=4)
    plain = generate(model, PROMPTS, base, PAD)
    cached = generate(model, PROMPTS, base.override(cache="delayed", refresh_interval=1), PAD)
    assert torch.equal(plain.trace, cached.trace) and plain.sequences == cached.sequences


def confident_model(token: int, family: str = "llada"):
    """A model whose every prediction is `token` with probability ~1 (entropy ~0)."""
    model = toy_model(family)
    head = torch.nn.Linear(model.config.hidden_size, VOCAB)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token] = 30.0
    model.net.lm_head = head
    return model


def test_blocks_are_created_one_per_iteration_and_decoded_in_parallel():
    model = confident_model(20)
    out = generate(model, [PROMPTS[0]], preset("d3llm", max_new_tokens=12, block_size=4), PAD)
    assert out.nfe == 3  # one block created per iteration, each committed whole
    assert out.trace[0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert out.tokens_per_forward == 4


def test_early_stop_fills_the_tail_with_eos():
    model = confident_model(1)  # EOS everywhere
    out = generate(model, [PROMPTS[0]], preset("d3llm", max_new_tokens=16, block_size=4), PAD)
    assert out.nfe == 1 and out.num_tokens == [1] and out.sequences == [[]]
    without = generate(model, [PROMPTS[0]], preset("d3llm", max_new_tokens=16, block_size=4, early_stop=False), PAD)
    assert without.nfe == 4


def test_forced_progress_when_nothing_is_certain():
    """Block forcing commits one token per forward; block+global (the LLaDA default) also the best
    candidate anywhere, so a forward commits one token (the best is in the current block) or two."""
    model = toy_model("llada")
    config = preset("d3llm", threshold=1e-6, max_new_tokens=8, block_size=4, early_stop=False)
    block = generate(model, [PROMPTS[0]], config.override(forcing="block"), PAD)
    assert block.nfe == 8 and sorted(block.trace[0].tolist()) == list(range(8))
    both = generate(model, [PROMPTS[0]], config, PAD)
    per_forward = torch.bincount(both.trace[0]).tolist()
    assert set(per_forward) == {1, 2} and both.nfe == len(per_forward) < 8


def test_streaming_prefix_only_grows_and_ends_at_the_answer():
    model = toy_model("llada", seed=2)
    seen = {row: [] for row in range(len(PROMPTS))}  # batch row -> final prefix length per step
    steps = []

    def record(state):
        steps.append(state.step)
        for row, n in zip(state.rows.tolist(), final_prefix_lengths(state).tolist()):
            seen[row].append(n)

    out = generate(model, PROMPTS, preset("d3llm", threshold=MIXED["llada"], max_new_tokens=12, block_size=4), PAD,
                   on_step=record)
    assert steps == list(range(1, out.nfe + 1))
    for row, lengths in seen.items():
        assert lengths == sorted(lengths) and lengths[-1] == out.num_tokens[row]
        assert len(lengths) == out.row_forwards[row]  # a row is seen until it finishes, then leaves


@pytest.mark.parametrize("cache", [{"cache": "none"}, {"cache": "prefix"}, {"cache": "delayed"},
                                   {"cache": "prefix", "future_masks": "cached"}], ids=str)
def test_finished_rows_leave_the_forward(cache):
    """Iteration k forwards exactly the rows that needed more than k forwards (in two forwards
    where some rows refresh their caches and others read them), and every row gets what it
    gets alone."""
    model = toy_model("llada", seed=2)
    rows_per_iteration, rows_now = [], []
    forward = model.forward

    def counting(input_ids, *args, **kwargs):
        rows_now.append(input_ids.shape[0])
        return forward(input_ids, *args, **kwargs)

    def end_iteration(state):
        rows_per_iteration.append(sum(rows_now))
        rows_now.clear()

    model.forward = counting
    config = preset("d3llm", threshold=MIXED["llada"], max_new_tokens=12, block_size=4, **cache)
    out = generate(model, PROMPTS, config, PAD, on_step=end_iteration)
    assert len(set(out.row_forwards)) > 1  # rows finish at different iterations
    assert rows_per_iteration == [sum(f > k for f in out.row_forwards) for k in range(out.nfe)]
    model.forward = forward
    for i, prompt in enumerate(PROMPTS):
        assert generate(model, [prompt], config, PAD).sequences[0] == out.sequences[i]


def test_bad_settings_fail_before_any_forward():
    from d3llm.errors import D3llmError

    for bad, message in [({"threshold": -1}, "`threshold` must be in (0, 10]"),
                         ({"block_add_threshold": 0}, "`block_add_threshold` must be in (0, 1]"),
                         ({"cache": "paged"}, "`cache` must be one of none, prefix, delayed, block, kv"),
                         ({"refresh_interval": 0}, "`refresh_interval` must be >= 1"),
                         ({"cache_delay": -2}, "`cache_delay` must be >= 0")]:
        with pytest.raises(D3llmError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                           .replace("]", r"\]")):
            preset("d3llm-cache", **bad)
    with pytest.raises(D3llmError, match="must be in \\(0, 1\\] for confidence"):
        preset("fast-dllm", threshold=2.0)


def test_a_new_strategy_is_one_class_and_one_preset(monkeypatch):
    """docs/design.md, "Adding a decoding policy": a registered `ThresholdStrategy` subclass and
    a preset line decode through the one loop, take flat settings, and are validated like the
    built-in ones. This one restates the entropy rule by its own code, so it must decode what
    `dparallel` decodes."""
    from dataclasses import dataclass
    from typing import ClassVar

    from d3llm.decode.config import PRESETS, DecodeConfig, parse_overrides, resolve_config
    from d3llm.decode.strategies import STRATEGIES, ThresholdStrategy
    from d3llm.errors import DecodeSettingError

    @dataclass(frozen=True)
    class Sharp(ThresholdStrategy):  # "sharp" predictions: minus the entropy above -threshold
        name: ClassVar[str] = "sharp"
        threshold_range: ClassVar[tuple[float, float]] = (0.0, 10.0)

        def goodness(self, scores):
            return -scores.entropy

        def passes(self, scores):
            return -scores.entropy >= -self.threshold

    monkeypatch.setitem(STRATEGIES, Sharp.name, Sharp)
    monkeypatch.setitem(PRESETS, "sharp", DecodeConfig(method="sharp", strategy=Sharp(0.5)))
    config = resolve_config("sharp", "llada", **parse_overrides([f"threshold={MIXED['llada']}", "max_new_tokens=12",
                                                                 "block_size=4"]))
    assert config.strategy == Sharp(MIXED["llada"]) and config.method == "sharp"
    model = toy_model("llada", seed=2)
    ours = generate(model, PROMPTS, config, PAD)
    reference = generate(model, PROMPTS, preset("dparallel", threshold=MIXED["llada"], max_new_tokens=12,
                                                block_size=4), PAD)
    assert ours.sequences == reference.sequences and torch.equal(ours.trace, reference.trace)
    assert len(set(ours.trace.flatten().tolist())) < ours.trace.numel()  # several tokens per forward
    assert resolve_config("vanilla", "llada", strategy="sharp").strategy == Sharp()
    with pytest.raises(DecodeSettingError, match=r"`threshold` must be in \(0, 10\] for sharp selection"):
        resolve_config("sharp", "llada", threshold=11)
