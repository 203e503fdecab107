"""A model's decode recipe: the method and settings it decodes with unless told otherwise,
stored beside its weights in `decode_recipe.json`, with how they were chosen.

    recipe = read_recipe(folder)          # Recipe | None
    recipe.method, recipe.settings        # "d3llm-cache", {"threshold": 0.8, ...}

`d3llm tune` writes it (d3llm.eval.tune: a fixed grid scored on the validation split by a fixed
rule, never the test split); `load_model` gives it to `resolve_config` as the model's recipe, so
`generate`, `eval`, `serve`, `chat` and the demo use it when no method is named, and
`d3llm models` shows it. Read without torch (the catalog lists it).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from d3llm.errors import ModelLoadError
from d3llm.files import read_json, write_atomic

RECIPE_FILE = "decode_recipe.json"


@dataclass(frozen=True)
class Recipe:
    method: str  # a preset name (d3llm.decode.config.PRESETS)
    settings: dict = field(default_factory=dict)  # flat decode settings on top of it
    dtype: str | None = None  # the compute dtype on a CPU under --dtype auto (None: float32)
    chosen: dict = field(default_factory=dict)  # how: rule, split, n, the grid's scores, command, code version

    def text(self) -> str:
        """`d3llm-cache threshold=0.8 (bfloat16)`: the method, its settings and dtype, one line."""
        return " ".join([self.method, *(f"{k}={v}" for k, v in self.settings.items()),
                         *([f"({self.dtype})"] if self.dtype else [])])

    def pair(self) -> tuple[str, dict]:
        """(method, settings), as `resolve_config` takes a recipe."""
        return self.method, dict(self.settings)


def read_recipe(folder: Path) -> Recipe | None:
    """The recipe stored in `folder`, None when there is none; a damaged file is an error that
    names it (a model must not silently decode with other settings than its recipe's)."""
    file = folder / RECIPE_FILE
    if not file.is_file():
        return None
    data = read_json(file)
    if not (isinstance(data, dict) and isinstance(data.get("method"), str) and isinstance(data.get("settings", {}), dict)
            and isinstance(data.get("chosen", {}), dict)):
        raise ModelLoadError(f"{file} is not a decode recipe (expected an object with a `method` name and a "
                             "`settings` object, as `d3llm tune --save` writes)")
    dtype = data.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise ModelLoadError(f"{file}: `dtype` must be a dtype name such as bfloat16, got {dtype!r}")
    return Recipe(data["method"], data.get("settings", {}), dtype, data.get("chosen", {}))


def write_recipe(folder: Path, recipe: Recipe, overwrite: bool = False) -> Path:
    """Store `recipe` in `folder` (atomically); an existing recipe is replaced only with `overwrite`."""
    file = folder / RECIPE_FILE
    if file.exists() and not overwrite:
        raise ModelLoadError(f"{file} exists; give --overwrite to replace the model's decode recipe")
    write_atomic(file, json.dumps(asdict(recipe), indent=2) + "\n")
    return file
