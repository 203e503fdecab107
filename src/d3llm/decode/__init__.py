"""Decoding: `DecodeConfig` and its presets, and the one decode loop `generate`.

    from d3llm.decode import generate, preset
    out = generate(lm.model, [prompt_ids], preset("d3llm", threshold=0.4), lm.tokenizer.pad_token_id)
    out.sequences, out.nfe, out.tokens_per_forward, out.trace

User settings (method name or None, overrides) become a config through `resolve_config`.
"""

from d3llm.decode.config import (
    METHODS, PRESETS, DecodeConfig, DecodeSettingError, default_method, preset, resolve_config,
)
from d3llm.decode.loop import DecodeOutput, final_prefix_lengths, generate

__all__ = ["METHODS", "PRESETS", "DecodeConfig", "DecodeOutput", "DecodeSettingError", "default_method",
           "final_prefix_lengths", "generate", "preset", "resolve_config"]
