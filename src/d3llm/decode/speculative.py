"""`ar-spec`: an AR model with prompt-lookup speculative decoding, the speculative baseline.

The paper compares d3LLM against speculative decoding of an AR model (EAGLE-3). Our baseline
is transformers' own prompt-lookup decoding (Saxena 2023; `generate(prompt_lookup_num_tokens=)`):
the last n-gram of the text is looked up earlier in the text, the tokens that followed it there
are proposed as a draft, and one forward of the model verifies the whole draft. It needs no
draft model, and greedy verification makes its output exactly the `ar` output: only the
number of forwards changes (tokens per forward = accepted draft tokens + 1 per forward).

transformers' assisted decoding takes one sequence at a time, so the rows of a batch decode
one after another; each row's forwards are counted with a forward hook on the network.
"""

from __future__ import annotations

import time

import torch

from d3llm.decode.config import DecodeConfig
from d3llm.decode.state import NOT_YET, DecodeState

DRAFT_TOKENS = 10  # proposed per verification forward (transformers' documented example value)


class _Counter:
    """Forwards of a network and the seconds spent in them, from forward hooks."""

    def __init__(self, net):
        self.calls, self.seconds, self._started = 0, 0.0, 0.0
        self._hooks = [net.register_forward_pre_hook(self._before), net.register_forward_hook(self._after)]

    def _before(self, module, args):
        self.calls += 1
        self._started = time.perf_counter()

    def _after(self, module, args, output):
        self.seconds += time.perf_counter() - self._started

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def generate_ar_spec(model, prompts: list[list[int]], config: DecodeConfig, pad_id: int,
                     on_step) -> tuple[DecodeState, float]:
    """Greedy prompt-lookup decoding of every row; returns the state (as the AR loop leaves it)
    and the seconds spent inside model forwards."""
    eos = model.facts.eos_token_id
    state = DecodeState.start_from(prompts, config, NOT_YET, eos, pad_id, model.device)
    counter = _Counter(model.net)
    try:
        for row, prompt in enumerate(prompts):
            before = counter.calls
            out = model.net.generate(torch.tensor([prompt], device=model.device), max_new_tokens=config.max_new_tokens,
                                     do_sample=False, prompt_lookup_num_tokens=DRAFT_TOKENS, use_cache=True,
                                     eos_token_id=eos, pad_token_id=pad_id)
            tokens = out[0, len(prompt):]
            state.response[row, : len(tokens)] = tokens
            state.trace[row, : len(tokens)] = torch.arange(len(tokens), device=tokens.device)
            state.row_forwards[row] = counter.calls - before
            state.stopped[row] = bool((tokens == eos).any())
            state.canvas_changed()
            if on_step:
                on_step(state)
    finally:
        counter.remove()
    state.step = counter.calls
    state.apply_early_stop()  # the columns after each row's EOS
    return state, counter.seconds
