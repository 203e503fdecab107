"""What the `d3llm` commands share: option types and help texts that read the same in every
command, the one-line error, hidden options for renamed spellings, and loading a model with its
decode config from --device / --dtype / --method / --set.

Torch-using modules are imported inside the functions, when a command runs.
"""

from __future__ import annotations

from typing import Annotated

import typer

from d3llm.errors import D3llmError

OVERWRITE_HELP = "Replace files in the output that this command did not write (without it, refuse)."
# Every command that decodes a batch of prompts decodes 16 at a time unless told (the recorded
# results in results/current were measured so; the training runs' validation uses 16 too).
BATCH_SIZE = 16
BATCH_HELP = "Prompts decoded together (the same default in eval, sweep and trajectories)."
SET_HELP = "Override a decode setting, e.g. --set threshold=0.4 --set cache=delayed (repeatable)."
MODEL_HELP = "Bundled model name (see `d3llm models`), model folder, or Hugging Face hub id ORG/NAME[@REVISION]."
METHOD_HELP = "Decode preset (default: d3llm for LLaDA/Dream-style, d3llm-block for block models, ar for AR models)."
CANVAS_HELP = "Response length (canvas). [default: the preset's max_new_tokens, 64]"
THRESHOLD_HELP = "Commit every token whose entropy (confidence for fast-dllm) passes this; = --set threshold=X."
TEMPERATURE_HELP = "Sampling temperature (0: greedy, the default); = --set temperature=X."
BLOCK_SIZE_HELP = "Tokens per block (LLaDA/Dream-style models); = --set block_size=N."
# One spelling of --device / --dtype for every command that loads a model (vLLM and SGLang's).
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps; auto: CUDA if "
                                     "available, else MPS, else the CPU.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16; auto: bfloat16 on a "
                                    "CUDA GPU that supports it, float16 on other GPUs and MPS, float32 on the CPU.")]


def fail(message: str) -> None:
    """Print `error: MESSAGE` on stderr and exit with code 2."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def renamed(old: str, new: str, meaning: str):
    """A hidden option for a spelling that meant something else in other commands: given, it is a
    one-line error naming the new spelling (exit 2), before any other check. Kept apart so one
    name has one meaning in every command (`--set`: decode settings, `--dtype`: compute dtype)."""

    def refuse(value):
        if value:
            given = value[0] if isinstance(value, (list, tuple)) else value
            raise D3llmError(f"{old} is now {new} in this command ({meaning}); give {new} {given}")
        return value

    return typer.Option(old, hidden=True, is_eager=True, callback=refuse, show_default=False)


def placement(device: str, dtype: str):
    """(torch.device, torch.dtype or "auto") of --device / --dtype; a bad choice is a one-line
    error. `--dtype auto` stays "auto", so that `load_model` gives each model the dtype of its
    decode recipe on a CPU (a torch dtype here would override it)."""
    from d3llm.models.loading import is_auto_dtype, resolve_device_dtype

    where, precision = resolve_device_dtype(device, dtype, names=("--device", "--dtype"))
    return where, "auto" if is_auto_dtype(dtype) else precision


def load(model: str, device: str, dtype: str):
    """The model --model names, placed by --device / --dtype."""
    from d3llm.models import load_model

    where, precision = placement(device, dtype)
    return load_model(model, device=where, dtype=precision)


def decode_config(method: str | None, family: str, max_new_tokens: int | None, settings: list[str],
                  recipe: tuple[str, dict] | None = None, **options):
    """The decode config of --method (None: the model's published `recipe`, else the family's
    default), the first-class options (--threshold, ...; None: not given) and --set NAME=VALUE
    (which wins, as the most specific)."""
    from d3llm.decode.config import parse_overrides, resolve_config

    fixed = {k: v for k, v in {"max_new_tokens": max_new_tokens, **options}.items() if v is not None}
    return resolve_config(method, family, recipe, **{**fixed, **parse_overrides(settings)})  # --set wins
