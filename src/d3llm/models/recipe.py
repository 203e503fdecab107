"""A model's decode recipe: the method and settings it decodes with unless told otherwise,
stored beside its weights in `decode_recipe.json`, with how they were chosen.

    recipe = read_recipe(folder)          # Recipe | None
    recipe.method, recipe.settings        # "d3llm-cache", {"threshold": 0.8, ...}
    recipe.pair("code")                   # (method, settings) on a task: its own settings where listed

`d3llm tune` writes it (d3llm.eval.tune: a fixed grid scored on the validation split by a fixed
rule, never the test split); `load_model` gives it to `resolve_config` as the model's recipe, so
`generate`, `eval`, `serve`, `chat` and the demo use it when no method is named, and
`d3llm models` shows it. A recipe may list settings of its own for some tasks (`tasks`: task
name -> settings replacing the recipe's there), chosen by the same rule on that task's validation
problems; `eval` and the demo use them on that task, commands that do not know the task (generate,
serve, chat) the recipe's own. Read without torch (the catalog lists it).
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
    tasks: dict = field(default_factory=dict)  # task name -> settings replacing `settings`' on that task

    def text(self) -> str:
        """`d3llm-cache threshold=0.5 (bfloat16); code: threshold=1.2`: the method, its settings
        and dtype, and the settings of each task that has its own, one line."""
        head = " ".join([self.method, *_words(self.settings), *([f"({self.dtype})"] if self.dtype else [])])
        return "; ".join([head, *(f"{task}: {' '.join(_words(s))}" for task, s in self.tasks.items())])

    def pair(self, task: str | None = None) -> tuple[str, dict]:
        """(method, settings), as `resolve_config` takes a recipe; on `task`, with the task's own
        settings where the recipe lists it."""
        return self.method, {**self.settings, **self.tasks.get(task, {})}


def _words(settings: dict) -> list[str]:
    return [f"{k}={v}" for k, v in settings.items()]


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
    tasks = data.get("tasks", {})
    if not (isinstance(tasks, dict) and all(isinstance(s, dict) for s in tasks.values())):
        raise ModelLoadError(f"{file}: `tasks` must map task names to settings objects, as `d3llm tune --save` "
                             f"writes, got {tasks!r}")
    dtype = data.get("dtype")
    if dtype is not None and not isinstance(dtype, str):
        raise ModelLoadError(f"{file}: `dtype` must be a dtype name such as bfloat16, got {dtype!r}")
    return Recipe(data["method"], data.get("settings", {}), dtype, data.get("chosen", {}), tasks)


def write_recipe(folder: Path, recipe: Recipe, overwrite: bool = False) -> Path:
    """Store `recipe` in `folder` (atomically); an existing recipe is replaced only with `overwrite`."""
    file = folder / RECIPE_FILE
    if file.exists() and not overwrite:
        raise ModelLoadError(f"{file} exists; give --overwrite to replace the model's decode recipe")
    write_atomic(file, json.dumps(asdict(recipe), indent=2) + "\n")
    return file
