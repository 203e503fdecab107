"""dLLM model families, checkpoint layouts, loaders and the bundled-model registry.

See `lm.py` (families and the `DiffusionLM` wrapper), `layouts.py` (official LLaDA/Dream
formats), `reading.py` (a checkpoint folder read: config checked, safetensors weights),
`checkpoint.py` (writing one: layouts, storage dtype, `d3llm export`), `loading.py` (names,
folders, device and dtype), `catalog.py` (the bundled models' records, read without torch).

Names are imported on first use: `d3llm.models.catalog` (what `d3llm models` reads) must not
pay for importing torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "load_network": "reading", "write_checkpoint": "checkpoint",
    "FAMILIES": "lm", "DiffusionLM": "lm", "Family": "lm", "LMOutput": "lm", "ModelFacts": "lm", "make_config": "lm",
    "LoadedModel": "loading", "load_model": "loading", "load_tokenizer": "tokenizer", "resolve_model": "loading",
    "resolve_device_dtype": "loading", "bundled_models": "catalog",
}

__all__ = sorted(_WHERE)

if TYPE_CHECKING:
    from d3llm.models.catalog import bundled_models
    from d3llm.models.checkpoint import write_checkpoint
    from d3llm.models.lm import FAMILIES, DiffusionLM, Family, LMOutput, ModelFacts, make_config
    from d3llm.models.loading import LoadedModel, load_model, resolve_device_dtype, resolve_model
    from d3llm.models.reading import load_network
    from d3llm.models.tokenizer import load_tokenizer


def __getattr__(name: str):
    # Deliberately lazy (allowed by tests/unit/test_structure.py): see the docstring.
    if name in _WHERE:
        value = getattr(importlib.import_module(f"d3llm.models.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'd3llm.models' has no attribute {name!r}")
