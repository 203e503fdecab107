"""The bundled models and what their records say about them, read without torch.

    bundled_models()            # name -> folder
    describe(folder)            # family, parameters, methods and blocks, validation accuracy

`d3llm models` prints `describe` of every bundled model; it reads config.json,
provenance.json and the safetensors header only, so listing takes a fraction of a second
(importing torch and transformers would take seconds).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from d3llm.decode.config import default_method, methods_for, model_block_size, validation_method
from d3llm.errors import D3llmError
from d3llm.files import safetensors_header
from d3llm.models.recipe import RECIPE_FILE, read_recipe

BUNDLED_DIR = Path(str(resources.files("d3llm"))) / "bundled"


def bundled_models() -> dict[str, Path]:
    """Bundled model names -> folders (those that exist in this installation)."""
    if not BUNDLED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(BUNDLED_DIR.iterdir()) if (p / "config.json").is_file()}


@dataclass
class ModelSummary:
    """What a model folder's records say: enough to choose a model without loading it."""

    name: str
    path: Path
    family: str  # llada | dream | ar | the config's model_type when not ours
    parameters: int | None  # None when no record or weights header gives it
    default_method: str  # what generate / eval / serve decode with unless --method is given (or a recipe)
    validation: dict[str, float] = field(default_factory=dict)  # task -> accuracy % (final validation)
    validation_method: str | None = None  # the preset the validation accuracy was measured with
    validation_n: int | None = None  # problems per task
    block_size: int | None = None  # the block size its decoders use unless one is given (None: an AR model)
    # the presets it is compared with (`d3llm demo`): its provenance's `methods`, else every preset of its family
    methods: tuple[str, ...] = ()
    recipe: str | None = None  # its decode recipe (decode_recipe.json), which commands use unless --method is given

    @property
    def method(self) -> str:
        """The preset commands decode it with unless --method is given: its recipe's, else the family's."""
        return self.recipe.split()[0] if self.recipe and not self.recipe.startswith("damaged") else self.default_method

    def accuracy_text(self) -> str:
        if not self.validation:
            return "-"
        scores = ", ".join(f"{task} {pct:.1f}" for task, pct in self.validation.items())
        how = ", ".join(x for x in (self.validation_method, f"n={self.validation_n}" if self.validation_n else "") if x)
        return f"{scores} ({how})" if how else scores


def _read(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# The suffix of an int8 matrix's row scales (`d3llm export --storage-dtype int8`: written by
# d3llm.models.checkpoint, read by d3llm.models.reading), here because this module reads weights
# headers without importing torch.
INT8_SCALE = ".d3llm_int8_scale"


def parameters_from_weights(folder: Path) -> int | None:
    """Parameter count from the safetensors headers (shapes only; no tensor data is read)."""
    total, files = 0, sorted(folder.glob("*.safetensors"))
    for file in files:
        try:
            header = safetensors_header(file)  # a header length past the end fails here, unallocated
            total += sum(math.prod(v["shape"]) for k, v in header.items()
                         if k != "__metadata__" and not k.endswith(INT8_SCALE))
        except (D3llmError, TypeError, KeyError, ValueError):
            return None
    return total or None


def describe(folder: Path, name: str | None = None) -> ModelSummary:
    """The summary of a model folder from config.json, provenance.json and the weights header.

    Ties (an AR model's lm_head sharing the embedding) are counted once by the trainer's
    record; the header fallback counts stored tensors."""
    config, provenance = _read(folder / "config.json"), _read(folder / "provenance.json")
    model_type = str(config.get("model_type", "?")).lower()  # official layouts; plain Llama/Qwen2 load as AR
    family = config.get("d3llm_family") or {"llama": "ar", "qwen2": "ar"}.get(model_type, model_type)
    parameters = provenance.get("parameters") or parameters_from_weights(folder)
    final = provenance.get("final_validation") or {}
    validation = {key.removesuffix("_accuracy_pct"): float(value) for key, value in final.items()
                  if key.endswith("_accuracy_pct") and isinstance(value, (int, float))}
    training = provenance.get("config") or {}
    method = training.get("eval_method") or validation_method(family)
    known = family in ("llada", "dream", "block", "ar")
    blocks = model_block_size(family, config.get("d3llm_block_size"), config.get("d3llm_decode_block_size")) \
        if known else None
    methods = provenance.get("methods")
    if not (isinstance(methods, list) and all(isinstance(m, str) for m in methods)):
        methods = methods_for(family) if known else []
    return ModelSummary(name or folder.name, folder, family, parameters, default_method(family), validation,
                        method if validation else None, training.get("eval_n") if validation else None, blocks,
                        tuple(methods), _recipe_text(folder))


def _recipe_text(folder: Path) -> str | None:
    """The folder's decode recipe on one line, or None; a damaged one says so (`load_model` refuses it)."""
    try:
        recipe = read_recipe(folder)
    except D3llmError:
        return f"damaged {RECIPE_FILE}"
    return None if recipe is None else recipe.text()


def models_table(summaries: list[ModelSummary]) -> list[str]:
    """`d3llm models` as aligned text lines that fit ~100 columns: one column per validation task
    (in the order the records give them), the preset and n they were measured with last. Paths
    are in `d3llm models --json`."""
    tasks = list(dict.fromkeys(task for s in summaries for task in s.validation))
    header = ["model", "family", "params", "method", "blocks", *tasks, "validation % with"]
    rows = [header]
    for s in summaries:
        how = ", ".join(x for x in (s.validation_method, f"n={s.validation_n}" if s.validation_n else "") if x)
        rows.append([s.name, s.family, f"{s.parameters / 1e6:.2f}M" if s.parameters else "?", s.method,
                     str(s.block_size or "-"), *(f"{s.validation[t]:.1f}" if t in s.validation else "-" for t in tasks),
                     how or "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    recipes = []
    for s in summaries:  # a task's own settings (`...; code: threshold=1.2`) each on a line below
        head, *tasks = (s.recipe or "").split("; ")
        recipes += [f"  {s.name}: {head}", *(f"    on {task}" for task in tasks)] if s.recipe else []
    return lines + (["", "decode recipes (chosen on validation by `d3llm tune`; used unless --method is given):",
                     *recipes] if recipes else [])
