"""Resolve a model by bundled name or folder, and load it with its tokenizer.

    from d3llm.models import load_model
    lm = load_model("tiny-teacher")          # bundled, ships in the package
    lm = load_model("/ckpt/LLaDA-8B-Instruct", dtype=torch.bfloat16)
    lm.model(input_ids).logits; lm.tokenizer; lm.facts

Bundled models live in `d3llm/bundled/<name>/` (weights, tokenizer, and `provenance.json`
with the command, seed, code version and metrics that produced them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from d3llm.errors import ModelLoadError
from d3llm.models.checkpoint import load_network, read_json
from d3llm.models.lm import DiffusionLM, ModelFacts

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(str(resources.files("d3llm"))) / "bundled"


def bundled_models() -> dict[str, Path]:
    """Bundled model names -> folders (those that exist in this installation)."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of a bundled name or a path; a clear error otherwise."""
    text = str(name_or_path)
    if not text.strip():
        raise ModelLoadError("`model` is empty; give a bundled name or a folder path")
    bundled = bundled_models()
    if text in bundled:
        return bundled[text]
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder but has no config.json")
        return path
    if path.exists():
        raise ModelLoadError(f"{path} is a file; give the model's folder")
    names = ", ".join(bundled) or "none installed"
    raise ModelLoadError(f"no bundled model or folder named {text!r} (bundled models: {names})")


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model, without running any remote code.

    `tokenizer.json` (ours, LLaDA) loads as `PreTrainedTokenizerFast`; a vocab.json +
    merges.txt pair (Dream's Qwen2 BPE) loads as transformers' `Qwen2Tokenizer`.
    """
    try:
        if (folder / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(str(folder))
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            from transformers import Qwen2Tokenizer

            return Qwen2Tokenizer.from_pretrained(str(folder))
    except Exception as exc:  # tokenizers raises plain Exceptions on bad files
        raise ModelLoadError(f"{folder}: the tokenizer files could not be read ({exc})") from None
    raise ModelLoadError(f"{folder} has no tokenizer (tokenizer.json, or vocab.json + merges.txt)")


@dataclass
class LoadedModel:
    """A model ready to decode: network + facts + tokenizer + where it came from."""

    model: DiffusionLM
    tokenizer: PreTrainedTokenizerBase
    path: Path
    name: str

    @property
    def facts(self) -> ModelFacts:
        return self.model.facts

    def provenance(self) -> dict:
        """provenance.json of a bundled or trained model ({} when absent)."""
        file = self.path / "provenance.json"
        return read_json(file) if file.is_file() else {}


def _check_tokenizer(facts: ModelFacts, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    vocab = len(tokenizer)
    for role, token_id in (("mask", facts.mask_token_id), ("eos", facts.eos_token_id)):
        if token_id is not None and token_id >= vocab:
            raise ModelLoadError(
                f"{folder}: the {role} token id {token_id} is outside the tokenizer's {vocab} ids "
                "(tokenizer and model do not belong together)"
            )


def _small_half_precision(net) -> bool:
    first = next(net.parameters())
    return first.dtype in (torch.float16, torch.bfloat16) and sum(p.numel() for p in net.parameters()) < 1e9


def load_model(
    name_or_path: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> LoadedModel:
    """Load a bundled model by name, or a folder in our or an official layout.

    `dtype=None` keeps the stored precision, except that half-precision weights of small
    models (< 1B parameters, e.g. the bundled ones, stored in float16 to stay small) are
    computed in float32 on a CPU, where bf16/fp16 matmuls are 3-7x slower
    (shared/reference/platform_notes.md). Pass `dtype` to choose yourself.
    """
    folder = resolve_model(name_or_path)
    net = load_network(folder, dtype=dtype)
    if dtype is None and torch.device(device).type == "cpu" and _small_half_precision(net):
        net = net.float()
    net = net.to(device)
    model = DiffusionLM(net)
    tokenizer = load_tokenizer(folder)
    _check_tokenizer(model.facts, tokenizer, folder)
    log.info("loaded %s (%s, %.1fM parameters)", folder, model.facts.family, model.num_parameters() / 1e6)
    return LoadedModel(model, tokenizer, folder, str(name_or_path))
