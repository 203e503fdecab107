"""The one-call Python API.

    import d3llm
    result = d3llm.generate("tiny-teacher", ["Tom has 3 apples. ..."], method="d3llm", threshold=0.4)
    result.texts, result.output.nfe, result.output.tokens_per_forward

Lower-level pieces (`d3llm.models.load_model`, `d3llm.decode.generate`) take token ids and
loaded models; this function takes names and text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from d3llm.decode import DecodeOutput, generate as decode, resolve_config
from d3llm.errors import D3llmError
from d3llm.models import LoadedModel, load_model
from d3llm.models.tokenizer import prompt_ids


@dataclass
class GenerateResult:
    texts: list[str]  # one answer per prompt
    output: DecodeOutput  # ids, counts, NFE, TPF, times, trace

    def __repr__(self) -> str:  # the answers and the counts, not the tensors
        out = self.output
        return (f"GenerateResult(texts={self.texts!r}, nfe={out.nfe}, num_tokens={list(out.num_tokens)}, "
                f"tokens_per_forward={out.tokens_per_forward:.2f}, seconds={out.seconds:.3f})")


def generate(
    model: str | Path | LoadedModel,
    prompts: str | list[str],
    method: str | None = None,
    max_new_tokens: int | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    **settings,
) -> GenerateResult:
    """Answer `prompts` (chat-formatted for the model) with a decode preset and overrides.

    `max_new_tokens`: the response canvas (None: the preset's). `device`, `dtype`: where and in
    what precision a model given by name is loaded ("auto": the best device, and its dtype;
    see `d3llm.models.loading.resolve_device_dtype`); a `LoadedModel` stays where it is."""
    lm = load_model(model, device=device, dtype=dtype) if isinstance(model, (str, Path)) else model
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    if not batch or any(not p.strip() for p in batch):
        raise D3llmError("`prompts` must be one or more non-empty strings")
    fixed = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    config = resolve_config(method, lm.facts.family, lm.recipe, **fixed, **settings)  # a setting the method ignores is an error
    out = decode(lm.model, [prompt_ids(lm.tokenizer, p) for p in batch], config, lm.tokenizer.pad_token_id)
    texts = [lm.tokenizer.decode(ids, skip_special_tokens=True) for ids in out.sequences]
    return GenerateResult(texts, out)
