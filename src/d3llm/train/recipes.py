"""Recipes that start from other recipes' outputs: say which, before training starts.

A recipe's `init_from` / `tokenizer_from` names a bundled model or a folder; most recipes in
configs/ name a folder another recipe writes (`runs/tiny-ar`), so from a fresh clone they cannot
run until that one has. `check_sources(path, config)` finds, for a missing folder, the recipe
whose header comment writes it (`d3llm train --config configs/X.yaml --out runs/Y`), follows
that recipe's own sources the same way, and raises one line naming the key, the folder and the
commands to run first, in order.
"""

from __future__ import annotations

import re
from pathlib import Path

from d3llm.errors import D3llmError
from d3llm.models.catalog import bundled_models
from d3llm.train.config import read_yaml_mapping

KEYS = ("init_from", "tokenizer_from")


def _exists(source: str) -> bool:
    return source in bundled_models() or (Path(source).expanduser() / "config.json").is_file()


def _maker(folder: str, configs: Path) -> Path | None:
    """The recipe in `configs` whose own header says it writes `folder` (`--out folder`)."""
    for recipe in sorted(configs.glob("*.y*ml")):
        if _writes(recipe) == folder.rstrip("/"):
            return recipe
    return None


def _sources(recipe: Path) -> dict[str, str]:
    raw = read_yaml_mapping(recipe, "training config")
    return {key: str(raw[key]) for key in KEYS if raw.get(key)}


class _NoWay(Exception):
    """Why a missing folder cannot be made from the recipes (no recipe writes it, or a cycle)."""


def _steps_first(folder: str, configs: Path, chain: list[str]) -> list[str]:
    """Commands that make `folder`, deepest first; `chain`: the folders that wait on it."""
    if folder in chain:
        raise _NoWay("a cycle: " + " -> ".join([*chain[chain.index(folder):], folder]))
    recipe = _maker(folder, configs)
    if recipe is None:
        raise _NoWay(f"no recipe in {configs} writes {folder}")
    steps: list[str] = []
    for key, source in _sources(recipe).items():
        if not _exists(source):
            try:
                before = _steps_first(source, configs, [*chain, folder])
            except _NoWay as exc:
                raise _NoWay(f"{recipe} (which writes {folder}) needs `{key}: {source}`: {exc}") from None
            steps += [s for s in before if s not in steps]
    return [*steps, f"d3llm train --config {recipe} --out {folder}"]


def check_sources(path: Path, config) -> None:
    """Raise one line when `config.init_from` / `tokenizer_from` (read from `path`) is missing."""
    for key in KEYS:
        source = getattr(config, key, None)
        if not source or _exists(source):
            continue
        out = _writes(path)
        try:
            how = "make it first: " + " && ".join(f"`{s}`" for s in _steps_first(source, path.parent,
                                                                                [out] if out else []))
        except _NoWay as exc:
            how = f"it cannot be made from the recipes here ({exc})"
        bundled = ", ".join(bundled_models()) or "none installed"
        raise D3llmError(f"{path}: `{key}: {source}` is neither a bundled model ({bundled}) nor a model folder; "
                         f"{how}; or point `{key}` at a bundled model")


def _writes(recipe: Path) -> str | None:
    """The folder `recipe`'s own header says it writes (`--out runs/X`), if it says."""
    for line in recipe.read_text(encoding="utf-8", errors="replace").splitlines():
        found = re.match(r"^#\s*d3llm train --config \S*" + re.escape(recipe.name) + r" --out (\S+)", line)
        if found:
            return found.group(1).rstrip("/")
    return None
