"""Decoding: `DecodeConfig` (presets by name) and the decode loop `generate`."""

from d3llm.decode.config import METHODS, PRESETS, DecodeConfig, preset
from d3llm.decode.loop import DecodeOutput, generate

__all__ = ["METHODS", "PRESETS", "DecodeConfig", "DecodeOutput", "generate", "preset"]
