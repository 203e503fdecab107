"""`d3llm-exact` (decode/exact.py): a block model's greedy causal decode, token for token, in
fewer forwards. Toy models here: their random weights draft badly, so the tests of accepted
drafts take them from an oracle; the bundled models on every task:
tests/equivalence/test_exact_decoding.py."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest
import torch

from d3llm.decode import generate, preset
from d3llm.decode.config import DecodeSettingError, methods_for, resolve_config
from d3llm.decode.loop import final_prefix_lengths
from d3llm.models import DiffusionLM
from tests.conftest import toy_model
from tests.unit.test_block import PROMPTS, as_ar

N = 13  # response length: not a multiple of the block sizes, so the last block is cut


def eos_prone(block_size: int, seed: int = 2) -> DiffusionLM:
    """A toy block model whose EOS takes over the causal predictions of its most frequent token
    (EOS's output row is that token's, 5% larger): its rows end at different lengths."""
    model = toy_model("block", block_size=block_size, seed=seed)
    tokens = Counter(t for ref in causal_decode(model, PROMPTS) for t in ref.sequences[0])
    with torch.no_grad():
        head = model.net.lm_head.weight
        head[model.facts.eos_token_id] = head[tokens.most_common(1)[0][0]] * 1.05
    return model


def causal_decode(model: DiffusionLM, prompts, n: int = N) -> list:
    """The reference: the same weights as a causal AR model, greedy, one prompt at a time."""
    ar = as_ar(model)
    return [generate(ar, [prompt], preset("ar", max_new_tokens=n), 0) for prompt in prompts]


class OracleDrafts:
    """`model` whose drafts (the predictions at masks after a block's first mask) are the
    reference's tokens, by position, except at every `wrong_every`-th position: the token after
    it. The causal predictions, which verify and commit, stay the model's. Batch 1 only."""

    def __init__(self, model: DiffusionLM, answer: dict[int, int], wrong_every: int | None):
        self.model, self.answer, self.wrong_every = model, answer, wrong_every
        self.facts, self.config, self.device = model.facts, model.config, model.device

    def __call__(self, input_ids, **kwargs):
        out = self.model(input_ids, **kwargs)
        kept = out.logits.shape[1]
        window = kwargs["column_blocks"][0, -input_ids.shape[1]:]
        masks = window == window.max()
        for j in range(input_ids.shape[1] - kept, input_ids.shape[1]):
            if j > 0 and masks[j] and masks[j - 1]:
                position = int(kwargs["position_ids"][0, j])
                wrong = self.wrong_every is not None and position % self.wrong_every == 0
                token = (self.answer[position] + wrong) % out.logits.shape[-1]
                out.logits[0, j - input_ids.shape[1] + kept] = torch.nn.functional.one_hot(
                    torch.tensor(token), out.logits.shape[-1]) * 100.0
        return out


@pytest.mark.parametrize("block_size", [1, 3, 4, 8])
def test_exact_decodes_what_the_causal_network_decodes(block_size):
    model = eos_prone(block_size)
    reference = causal_decode(model, PROMPTS)
    assert len({ref.num_tokens[0] for ref in reference}) == 3  # EOS ends the rows at different lengths
    config = preset("d3llm-exact", max_new_tokens=N)
    batch = generate(model, PROMPTS, config, 0)
    for row, (prompt, ref) in enumerate(zip(PROMPTS, reference)):
        alone = generate(model, [prompt], config, 0)
        assert alone.sequences == ref.sequences and alone.num_tokens == ref.num_tokens
        assert batch.sequences[row] == ref.sequences[0] and batch.num_tokens[row] == ref.num_tokens[0]
        assert torch.equal(batch.response[row], ref.response[0])  # the EOS tail too
    assert batch.nfe == max(batch.row_forwards) and all(f <= n for f, n in zip(batch.row_forwards, batch.num_tokens))


@pytest.mark.parametrize("wrong_every", [None, 3, 5])
@pytest.mark.parametrize("block_size", [3, 4])
def test_drafts_change_the_forwards_never_the_tokens(block_size, wrong_every):
    model = eos_prone(block_size)  # its rows end at EOS after 6 and 2 tokens, and at the canvas end
    config = preset("d3llm-exact", max_new_tokens=N)
    for prompt, ref in zip(PROMPTS, causal_decode(model, PROMPTS)):
        answer = dict(enumerate(ref.response[0].tolist(), start=len(prompt)))
        out = generate(OracleDrafts(model, answer, wrong_every), [prompt], config, 0)
        assert out.sequences == ref.sequences and out.num_tokens == ref.num_tokens
        if wrong_every is None:  # every draft right: the first forward commits one token, each next a block
            assert out.row_forwards[0] == 1 + math.ceil((ref.num_tokens[0] - 1) / block_size)


@pytest.mark.parametrize("alignment", ["response", "absolute"])
def test_the_masks_fill_the_models_block(alignment):
    """Each forward's masks run from the first undrafted column to the end of the model's block
    that holds it (blocks from the response start; Fast-dLLM v2's checkpoints: from position 0)."""
    toy = eos_prone(4)
    model = DiffusionLM(toy.net, replace(toy.facts, block_alignment=alignment))
    k, forwards = 4, []

    def spy(input_ids, **kwargs):
        blocks = kwargs["column_blocks"][0, -input_ids.shape[1]:]
        forwards.append((kwargs["position_ids"][0][blocks == blocks.max()].tolist(),
                         kwargs["position_ids"][0][blocks < blocks.max()].tolist()))
        return model(input_ids, **kwargs)

    spy.facts, spy.config, spy.device = model.facts, model.config, model.device
    for prompt, ref in zip(PROMPTS, causal_decode(model, PROMPTS, n=N)):
        forwards.clear()
        assert generate(spy, [prompt], preset("d3llm-exact", max_new_tokens=N), 0).sequences == ref.sequences
        canvas_end = len(prompt) + N
        response_start = 0 if alignment == "absolute" else len(prompt)
        for masks, causal in forwards:
            assert masks == list(range(causal[-1] + 1, masks[-1] + 1))  # right after the causal columns
            assert (masks[-1] + 1 - response_start) % k == 0 or masks[-1] + 1 == canvas_end
            assert len(masks) <= k and (len(causal) <= k + 1 or causal[0] == 0)  # t0 and a block of drafts


def test_streaming_sees_the_causal_decode_grow_and_rows_leave_when_unwanted():
    model = eos_prone(4)
    reference = causal_decode(model, PROMPTS)
    seen = {row: [] for row in range(len(PROMPTS))}

    def record(state):
        for i, (row, n) in enumerate(zip(state.rows.tolist(), final_prefix_lengths(state).tolist())):
            seen[row].append(state.response[i, :n].tolist())

    out = generate(model, PROMPTS, preset("d3llm-exact", max_new_tokens=N), 0, on_step=record)
    for row, prefixes in seen.items():
        assert len(prefixes) == out.row_forwards[row]
        final = reference[row].response[0, : out.num_tokens[row]].tolist()
        assert all(final[: len(p)] == p for p in prefixes) and prefixes[-1] == final
    stop_all = generate(model, PROMPTS, preset("d3llm-exact", max_new_tokens=N), 0,
                        on_step=lambda state: torch.ones(len(state.rows), dtype=torch.bool))
    assert stop_all.nfe == 1 and stop_all.row_forwards == [1, 1, 1]


def test_d3llm_exact_is_a_block_models_greedy_method():
    assert "d3llm-exact" in methods_for("block") and "d3llm-exact" not in methods_for("llada")
    config = resolve_config("d3llm-exact", "block", max_new_tokens=8, block_size=8)
    assert (config.strategy.name, config.cache.name) == ("self-speculative", "causal")
    for settings, setting, message in [
        ({"temperature": 0.5}, "temperature", "`temperature` must be 0 with method 'd3llm-exact'"),
        ({"threshold": 0.4}, "threshold", "`threshold` has no effect with method 'd3llm-exact'"),
        ({"block_activate_threshold": 0.5}, "block_activate_threshold", "has no effect with method 'd3llm-exact'"),
        ({"early_stop": True}, "early_stop", "`early_stop` has no effect with method 'd3llm-exact'"),
        ({"cache": "block"}, "cache", "`cache` has no effect with method 'd3llm-exact'"),
        ({"strategy": "topk"}, "strategy", "strategy self-speculative decodes with cache causal"),
    ]:
        with pytest.raises(DecodeSettingError, match=message) as error:
            resolve_config("d3llm-exact", "block", **settings)
        assert error.value.setting == setting
    with pytest.raises(DecodeSettingError, match="not strategy topk with cache causal") as error:
        resolve_config("block", "block", cache="causal")
    assert error.value.setting == "cache"
    with pytest.raises(DecodeSettingError, match=r"'d3llm-exact' \(cache causal\) decodes block-diffusion models"):
        resolve_config("d3llm-exact", "llada")
    with pytest.raises(DecodeSettingError, match="cannot decode an autoregressive model"):
        resolve_config("d3llm-exact", "ar")


def test_column_blocks_lay_out_block_models_only():
    with pytest.raises(ValueError, match="`column_blocks` lays out a block model's attention; this model is ar"):
        toy_model("ar")(torch.tensor([[5, 6]]), column_blocks=torch.tensor([[0, 1]]))
