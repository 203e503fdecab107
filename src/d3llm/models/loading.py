"""Resolve a model by bundled name, folder or hub id, and load it with its tokenizer.

    from d3llm.models import load_model
    lm = load_model("tiny-teacher")          # bundled, ships in the package; best device, its dtype
    lm = load_model("/ckpt/LLaDA-8B-Instruct", device="cuda:1", dtype="bfloat16")
    lm = load_model("d3LLM/d3LLM_LLaDA")     # Hugging Face hub id (ORG/NAME[@REVISION]), d3llm.models.hub
    lm.model(input_ids).logits; lm.tokenizer; lm.facts

`resolve_device_dtype` is the one place `device` / `dtype` choices ("auto", "cuda:1",
"bfloat16", torch objects) become torch objects: the CLI, the Python API, the server, the
demo, sweeps, teacher rollouts and the lm-eval adapter all go through it.

Bundled models live in `d3llm/bundled/<name>/` (weights, tokenizer, and `provenance.json`
with the command, seed, code version and metrics that produced them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from d3llm.decode.config import resolve_config
from d3llm.errors import D3llmError, DecodeSettingError, ModelLoadError
from d3llm.models.catalog import BUNDLED_DIR, bundled_models, parameters_from_weights  # noqa: F401  (re-exported)
from d3llm.models.reading import load_network, read_json
from d3llm.models.hub import hub_id_of_folder, parse_hub_id, snapshot
from d3llm.models.lm import DiffusionLM, ModelFacts
from d3llm.models.published import PublishedModel, published
from d3llm.models.recipe import RECIPE_FILE, Recipe, read_recipe
from d3llm.models.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _device(device: str | torch.device | None, arg: str) -> torch.device:
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    shown = f"{arg} {device}"
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device.strip().lower())
        except RuntimeError:
            parsed = None
    else:
        raise D3llmError(f"{shown}: a device is a string ({' | '.join(DEVICE_CHOICES)}) or a torch.device, "
                         f"got {type(device).__name__}")
    if parsed is None or parsed.type not in ("cpu", "cuda", "mps"):
        raise D3llmError(f"{shown}: unknown device; choose one of {', '.join(DEVICE_CHOICES)}")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise D3llmError(f"{shown}: CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise D3llmError(f"{shown}: only {count} CUDA device{'s' if count != 1 else ''} "
                             f"(cuda:0{f' .. cuda:{count - 1}' if count > 1 else ''})")
    if parsed.type == "mps" and not _mps_available():
        raise D3llmError(f"{shown}: MPS (Apple GPU) is not available on this machine")
    return torch.device("cpu") if parsed.type == "cpu" else parsed


def is_auto_dtype(dtype: object) -> bool:
    """`dtype` leaves the choice to us: "auto" or None (`load_model` then takes a model's recipe
    dtype on a CPU)."""
    return dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto")


def _dtype(dtype: str | torch.dtype | None, device: torch.device, arg: str) -> torch.dtype:
    if is_auto_dtype(dtype):
        if device.type == "cuda":  # native bf16 (compute capability >= 8), not emulated
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.float16 if device.type == "mps" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.strip().lower().removeprefix("torch.")]
    raise D3llmError(f"{arg} {dtype}: unknown dtype; choose one of {', '.join(DTYPE_CHOICES)}")


def resolve_device_dtype(
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    names: tuple[str, str] = ("device", "dtype"),
) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype to load and decode with.

    `device`: "auto" (or None) is the best available: CUDA, else MPS, else the CPU; "cpu",
    "cuda", "cuda:N", "mps" or a `torch.device` are checked to exist. `dtype`: "auto" (or None)
    is bfloat16 on a CUDA GPU that supports it, float16 on other GPUs and MPS, float32 on the
    CPU; otherwise "float32", "bfloat16", "float16" or a floating `torch.dtype`. A bad choice
    is a one-line `D3llmError` naming the argument as `names` spells it (the CLI passes
    ("--device", "--dtype"))."""
    resolved = _device(device, names[0])
    return resolved, _dtype(dtype, resolved, names[1])


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of a bundled name, a path, or a Hugging Face hub id `ORG/NAME[@REVISION]`
    (its snapshot in the hub cache, downloaded if needed; d3llm.models.hub), in that order: an
    existing folder wins over a hub id of the same spelling. A clear error otherwise."""
    text = str(name_or_path)
    if not text.strip():
        raise ModelLoadError("`model` is empty; give a bundled name, a folder path or a hub id (ORG/NAME)")
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
    hub_id = parse_hub_id(text) if not isinstance(name_or_path, Path) else None
    if hub_id is not None:
        folder = snapshot(hub_id)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"model {hub_id}: the repo has no config.json (not a model d3llm can load)")
        return folder
    names = ", ".join(bundled) or "none installed"
    raise ModelLoadError(f"no bundled model, folder or hub id (ORG/NAME) named {text!r} (bundled models: {names})")


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

    @property
    def published(self) -> PublishedModel | None:
        """The published checkpoint this is (by the hub id it was named by, or its hub-cache
        folder), with the decode settings its paper used; None for other models."""
        return published(self.name) or published(hub_id_of_folder(self.path))

    @cached_property  # the folder's file is read once per loaded model
    def stored_recipe(self) -> Recipe | None:
        """What this model decodes with unless a method is named: a published checkpoint's paper
        settings, else the folder's decode recipe (d3llm.models.recipe); None: its family's default."""
        entry = self.published
        if entry is not None and entry.family == self.facts.family:  # (not a repo we describe, loaded as another family)
            return Recipe(entry.method, dict(entry.settings))
        return read_recipe(self.path)

    @property
    def recipe(self) -> tuple[str, dict] | None:
        """(method, settings) of `stored_recipe`, as `d3llm.decode.config.resolve_config` takes it."""
        return self.recipe_for(None)

    def recipe_for(self, task: str | None) -> tuple[str, dict] | None:
        """`recipe` on `task`: with the settings the recipe lists for that task, if any."""
        return None if self.stored_recipe is None else self.stored_recipe.pair(task)

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


def _mem_available() -> int | None:
    """Bytes the kernel says can be allocated without swapping (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _fitting_dtype(folder: Path, device: torch.device, dtype: torch.dtype, auto: bool) -> torch.dtype:
    """float32 on a CPU holds 4 bytes a parameter in private memory: an 8B bf16 checkpoint becomes
    32 GB. When that exceeds 90% of the available memory, "auto" takes bfloat16 instead (the
    weights then stay in the file's pages: docs/benchmarks.md, real size) and an explicit
    float32 is refused before anything is read, rather than killed by the kernel halfway."""
    if device.type != "cpu" or dtype != torch.float32:
        return dtype
    params, available = parameters_from_weights(folder), _mem_available()
    if not params or available is None or 4 * params <= 0.9 * available:
        return dtype
    if auto:
        log.info("%s: %.2fB parameters do not fit in float32 (%.1f GiB available): loading in bfloat16",
                 folder, params / 1e9, available / 2**30)
        return torch.bfloat16
    raise ModelLoadError(f"`dtype` float32: {folder} holds {params / 1e9:.2f}B parameters, {4 * params / 2**30:.1f} GiB "
                         f"in float32, more than the {available / 2**30:.1f} GiB of memory available; use bfloat16")


def load_model(
    name_or_path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = "auto"
) -> LoadedModel:
    """Load a bundled model by name, or a folder in our or an official layout, onto `device`
    in `dtype` (see `resolve_device_dtype`: by default the best device, and float32 on a CPU:
    exact, and the fastest for forwards of a few columns; bf16 pays from about 8 columns on a CPU
    with bf16 instructions, docs/platform-notes.md; "auto" on a CPU takes the dtype of the
    model's decode recipe when it names one, d3llm.models.recipe; a model too large for float32
    in this machine's memory loads in bfloat16 under "auto")."""
    auto = is_auto_dtype(dtype)
    device, dtype = resolve_device_dtype(device, dtype)
    folder = resolve_model(name_or_path)
    recipe = read_recipe(folder)
    if auto and device.type == "cpu" and recipe is not None and recipe.dtype:  # chosen with the recipe
        dtype = _dtype(recipe.dtype, device, f"{folder / RECIPE_FILE}: `dtype`")
    dtype = _fitting_dtype(folder, device, dtype, auto)
    net = load_network(folder, dtype=dtype).to(device)  # cast on the host, then move: less to copy
    model = DiffusionLM(net)
    tokenizer = load_tokenizer(folder)
    _check_tokenizer(model.facts, tokenizer, folder)
    log.info("loaded %s (%s, %.1fM parameters) on %s in %s", folder, model.facts.family,
             model.num_parameters() / 1e6, device, str(dtype).removeprefix("torch."))
    loaded = LoadedModel(model, tokenizer, folder, str(name_or_path))
    _check_recipe(loaded)
    return loaded


def _check_recipe(lm: LoadedModel) -> None:
    """A folder's recipe must decode this model, on every task it lists: a bad setting there is
    an error naming the file, at load time, not one that reads as the user's own setting when a
    command first decodes with it."""
    recipe = lm.stored_recipe
    if recipe is None or lm.published is not None:
        return
    for task in (None, *recipe.tasks):
        try:
            resolve_config(None, lm.facts.family, recipe=recipe.pair(task))
        except DecodeSettingError as e:
            where = f"`tasks.{task}`" if task else "its settings"
            raise ModelLoadError(f"{lm.path / RECIPE_FILE} ({where}): {e} (fix the file, or "
                                 "remove it and choose a recipe again with `d3llm tune MODEL --save`)") from None
