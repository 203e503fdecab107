"""The decode state's derived values and the loop's empty KV caches."""

import torch
from transformers import DynamicCache

from d3llm.decode import preset
from d3llm.decode.cache import new_cache
from d3llm.decode.state import DecodeState
from tests.conftest import toy_model


def test_new_caches_are_independent_and_laid_out_as_transformers_does():
    config = toy_model("llada").config
    one, two = new_cache(config), new_cache(config)
    assert [type(layer) for layer in one.layers] == [type(layer) for layer in DynamicCache(config=config).layers]
    keys = torch.ones(1, 2, 3, 4)
    one.layers[0].update(keys, keys)
    assert one.get_seq_length() == 3 and two.get_seq_length() == 0 and new_cache(config).get_seq_length() == 0


def test_tally_follows_every_write():
    config = preset("d3llm", max_new_tokens=8, block_size=4)
    state = DecodeState.start_from([[5, 6, 7], [8]], config, mask_id=2, eos_id=1, pad_id=0, device=torch.device("cpu"))

    def fresh():
        masked = state.response == 2
        progress = 1 - state.per_block(masked.long()) / torch.tensor([4, 4])
        return masked, progress

    chosen = torch.zeros_like(state.response, dtype=torch.bool)
    chosen[0, :4] = chosen[1, 1] = True
    state.commit(chosen, torch.full_like(state.response, 9))
    masked, progress = fresh()
    assert torch.equal(state.masked(), masked) and torch.equal(state.progress(), progress)
    assert state.completed_at.tolist() == [[0, -1], [-1, -1]] and state.row_forwards.tolist() == [1, 1]
    state.response[1, :] = 9  # a write the state does not see: `canvas_changed` says so
    state.canvas_changed()
    assert not state.masked()[1].any() and state.row_finished().tolist() == [False, True]
    part = state.select(torch.tensor([0]))
    assert torch.equal(part.masked(), state.masked()[:1]) and part.response.shape == (1, 8)


def test_early_stop_fills_after_the_first_eos_only_in_rows_that_still_have_masks():
    # As the authors' loops: they end once nothing is masked, before their early stop, so a row
    # whose last commit was an EOS before tokens it had already committed keeps those tokens.
    config = preset("d3llm", max_new_tokens=8, block_size=4)
    state = DecodeState.start_from([[5, 6], [5, 6]], config, mask_id=2, eos_id=1, pad_id=0, device=torch.device("cpu"))
    every = torch.ones_like(state.response, dtype=torch.bool)
    done = torch.tensor([[9, 1, 7, 7, 7, 7, 7, 7], [9, 1, 7, 7, 2, 2, 2, 2]])  # row 1: four masks left
    state.commit(every & (done != 2), done)
    state.apply_early_stop(keep_finished=True)  # the diffusion loop's early stop
    assert state.response.tolist() == [[9, 1, 7, 7, 7, 7, 7, 7], [9, 1, 1, 1, 1, 1, 1, 1]]
    assert state.filled.tolist() == [[False] * 8, [False] * 4 + [True] * 4]
    state.apply_early_stop()  # greedy's rule (AR, exact decoding): nothing after the first EOS
    assert state.response.tolist() == [[9, 1, 1, 1, 1, 1, 1, 1]] * 2
