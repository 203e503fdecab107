"""dLLM model families, checkpoint layouts, loaders and the bundled-model registry.

See `lm.py` (families and the `DiffusionLM` wrapper), `layouts.py` (official LLaDA/Dream
formats), `checkpoint.py` (safetensors reading/writing), `loading.py` (names and folders).
"""

from d3llm.models.checkpoint import load_network, write_checkpoint
from d3llm.models.lm import FAMILIES, DiffusionLM, Family, LMOutput, ModelFacts, make_config
from d3llm.models.loading import LoadedModel, bundled_models, load_model, load_tokenizer, resolve_model

__all__ = [
    "FAMILIES", "DiffusionLM", "Family", "LMOutput", "LoadedModel", "ModelFacts", "bundled_models",
    "load_model", "load_network", "load_tokenizer", "make_config", "resolve_model", "write_checkpoint",
]
