"""Decoding: `DecodeConfig` and its presets, and the one decode loop `generate`.

    from d3llm.decode import generate, preset
    out = generate(lm.model, [prompt_ids], preset("d3llm", threshold=0.4), lm.tokenizer.pad_token_id)
    out.sequences, out.nfe, out.tokens_per_forward, out.trace

User settings (method name or None, overrides) become a config through `resolve_config`.
The settings (config.py, strategies.py, policies.py) import without torch; `generate`,
`DecodeOutput` and `final_prefix_lengths` load the loop (and torch) on first use.
"""

from d3llm.decode.config import (
    METHODS, PRESETS, DecodeConfig, DecodeSettingError, EarlyStop, default_method, preset, resolve_config,
)

__all__ = ["METHODS", "PRESETS", "DecodeConfig", "DecodeOutput", "DecodeSettingError", "EarlyStop", "default_method",
           "final_prefix_lengths", "generate", "preset", "resolve_config"]

_LOOP_NAMES = ("DecodeOutput", "final_prefix_lengths", "generate")


def __getattr__(name: str):
    if name in _LOOP_NAMES:  # lazy (tests/unit/test_structure.py LAZY): the loop imports torch
        from d3llm.decode import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'd3llm.decode' has no attribute {name!r}")
