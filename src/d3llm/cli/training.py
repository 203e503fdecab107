"""The commands that make models: `d3llm train` (a YAML recipe), `d3llm trajectories` (teacher
rollouts, and `import` / `export` of the d3LLM authors' datasets), `d3llm distill` (a student
from trajectories) and `d3llm export` (another layout or precision)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from d3llm.cli.common import BATCH_HELP, BATCH_SIZE, OVERWRITE_HELP, Device, Dtype, fail, placement, renamed
from d3llm.errors import D3llmError

# --teacher names a model's role; -m/--model, every other command's spelling, is accepted beside it.
TEACHER_NAMES = ("--teacher", "-t", "--model", "-m")


def _key_values(items: list[str], what: str) -> dict:
    """`["masking=random", "windows=[16,32]"]` -> {"masking": "random", "windows": [16, 32]} (YAML values)."""
    import yaml

    from d3llm.train.config import load_yaml

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise D3llmError(f"{what} {item!r} must be NAME=VALUE")
        try:
            out[key.strip().replace("-", "_")] = load_yaml(text)
        except yaml.YAMLError as exc:
            raise D3llmError(f"{what} {item!r}: the value is not valid YAML ({' '.join(str(exc).split())})") from None
    return out


def _torch_dtype(name: str):
    """`d3llm export --storage-dtype`: the stored precision (auto: as the source), not a compute dtype."""
    import torch

    choices = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
               "int8": torch.int8}
    if name not in choices:
        fail(f"`--storage-dtype` must be one of {', '.join(choices)}, got {name!r}")
    return choices[name]


def train(
    config: Annotated[Path, typer.Option("--config", "-c", help="Training config (YAML).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (run again to resume).")],
    steps: Annotated[Optional[int], typer.Option(help="Override `steps`.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Override `threads` (torch threads).")] = None,
    stop_at: Annotated[Optional[int], typer.Option(
        help="End at this step of the recipe (its schedule unchanged) and write that model.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Train a model from a YAML recipe; killed, the same command resumes."""
    from d3llm.files import check_out_folder
    from d3llm.progress import progress_bar
    from d3llm.train.config import TrainConfig
    from d3llm.train.recipes import check_sources
    from d3llm.train.run_folder import claim_out
    from d3llm.train.trainer import train as run

    check_out_folder(out)
    claim_out(out, overwrite)
    overrides = {k: v for k, v in {"steps": steps, "threads": threads}.items() if v is not None}
    recipe = TrainConfig.from_yaml(config, **overrides)
    check_sources(config, recipe)  # a recipe that starts from another's output says which, now
    with progress_bar(None, "train") as bar:
        folder = run(recipe, out, command=["d3llm", *sys.argv[1:]], stop_at=stop_at, progress=bar.phase,
                     overwrite=overwrite)
    typer.echo(f"model written to {folder}")


def trajectories(
    ctx: typer.Context,
    teacher: Annotated[Optional[str], typer.Option(*TEACHER_NAMES, help=(
        "Teacher dLLM: bundled name, folder or hub id ORG/NAME. [required]"))] = None,
    tasks: Annotated[list[str], typer.Option("--task", help=(
        "TASK=N problems (repeatable), e.g. arith=2000. [required]"))] = [],  # noqa: B006
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help=(
        "Trajectory folder (run again to resume). [required]"))] = None,
    split: Annotated[str, typer.Option(help="Split the prompts come from.")] = "train",
    seed: Annotated[int, typer.Option(help="Which problems are drawn.")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Response canvas.")] = 64,
    block_size: Annotated[Optional[int], typer.Option(
        help="Teacher block size (default: the teacher's own, else 32).")] = None,
    chunk_size: Annotated[int, typer.Option(help="Prompts per chunk file (the unit of resume).")] = 64,
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = BATCH_SIZE,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Teacher rollouts (one token per step) stored as rank vectors; torchrun shards them (a
    CUDA device without an index is each process's own GPU); killed, the same command resumes;
    when all chunks are done they are merged. `import` / `export` convert the d3LLM authors'
    trajectory datasets (docs/distillation.md)."""
    from d3llm.files import check_out_folder
    from d3llm.progress import progress_bar
    from d3llm.tasks.base import check_count
    from d3llm.trajectory.rollout import run
    from d3llm.trajectory.store import claim_out

    if ctx.invoked_subcommand is not None:
        return
    for option, value in (("--teacher", teacher), ("--task", tasks), ("--out", out)):
        if not value:
            raise D3llmError(f"Missing option '{option}' (rollouts need --teacher, --task and --out; "
                             "or `d3llm trajectories import|export`)")
    check_out_folder(out)
    claim_out(out, overwrite)
    where, precision = placement(device, dtype)
    counts = {}
    for name, n in _key_values(tasks, "--task").items():
        check_count(n, f"--task {name}=N: N", low=1)
        counts[name.replace("_", "-")] = n
    with progress_bar(None, "teacher rollouts") as bar:
        folder = run(teacher, counts, out, split=split, seed=seed, max_new_tokens=max_new_tokens, block_size=block_size,
                     chunk_size=chunk_size, batch_size=batch_size, device=where, dtype=precision, progress=bar.phase)
    typer.echo(f"trajectories in {folder}")


def trajectories_import(
    source: Annotated[str, typer.Argument(help="The authors' dataset: a save_to_disk folder, Parquet files, or a "
                                               "hub dataset id such as d3LLM/trajectory_data_llada_32.")],
    teacher: Annotated[str, typer.Option(*TEACHER_NAMES, help="The model that rolled them out (its mask id and "
                                         "tokenizer; distil with the same --teacher).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Trajectory folder (run again to resume).")],
    chunk_size: Annotated[int, typer.Option(help="Rows per chunk file (the unit of resume).")] = 1024,
) -> None:
    """Convert the d3LLM authors' trajectories (snapshots after every step) into rank vectors;
    their is_correct becomes `correct`, which `d3llm distill` keeps by default."""
    from d3llm.files import check_out_folder
    from d3llm.trajectory.official import import_official

    check_out_folder(out)
    typer.echo(f"trajectories in {import_official(source, out, teacher, chunk_size=chunk_size)}")


def trajectories_export(
    folder: Annotated[Path, typer.Argument(help="Trajectory folder (d3llm trajectories or import).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new or empty folder for the dataset.")],
    fmt: Annotated[str, typer.Option("--format", help="d3llm-official: the authors' save_to_disk dataset.")] = (
        "d3llm-official"),
    teacher: Annotated[Optional[str], typer.Option(*TEACHER_NAMES, help=(
        "Model whose tokenizer decodes the texts (default: the folder's teacher)."))] = None,
) -> None:
    """Write a trajectory folder in the d3LLM authors' format (one snapshot per step)."""
    from d3llm.files import check_out_folder
    from d3llm.trajectory.official import export_official

    if fmt != "d3llm-official":
        fail(f"`--format` must be d3llm-official, got {fmt!r}")
    check_out_folder(out)
    typer.echo(f"dataset written to {export_official(folder, out, teacher)}")


def distill(
    teacher: Annotated[str, typer.Option(*TEACHER_NAMES, help="Teacher dLLM (the student starts from it).")],
    trajectories: Annotated[Path, typer.Option(help="Folder made by `d3llm trajectories`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (run again to resume).")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Recipe (YAML) with a distill: section.")] = None,
    settings: Annotated[list[str], typer.Option("--train-set", help=(
        "NAME=VALUE: a distill setting (masking=random, progressive_noise=false, windows=[32], "
        "complementary=false, entropy_weight=0, lora_rank=8) or a training one (steps=100); repeatable. "
        "Not --set, which sets decode settings in the other commands."))] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
    old_set: Annotated[list[str], renamed(  # noqa: ARG001 (refused in its callback)
        "--set", "--train-set", "training settings; --set sets decode settings in generate, eval, sweep and chat"
    )] = [],  # noqa: B006
) -> None:
    """Distil a d3LLM student from a teacher's trajectories; killed, the same command resumes."""
    from d3llm.files import check_out_folder
    from d3llm.progress import progress_bar
    from d3llm.train.config import read_yaml_mapping
    from d3llm.train.distill import distill_config
    from d3llm.train.run_folder import claim_out
    from d3llm.train.trainer import train as run

    check_out_folder(out)
    claim_out(out, overwrite)
    recipe = {}
    if config is not None:
        if not config.is_file():
            raise D3llmError(f"--config {config} not found")
        recipe = read_yaml_mapping(config, "--config")
    train_config = distill_config(teacher, str(trajectories), recipe, _key_values(settings, "--train-set"))
    with progress_bar(None, "distill") as bar:
        folder = run(train_config, out, command=["d3llm", *sys.argv[1:]], progress=bar.phase, overwrite=overwrite)
    typer.echo(f"student written to {folder}")


def export(
    source: Annotated[str, typer.Argument(help="Model folder or bundled name.")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Destination folder: new, empty, or a previous export (replaced). A folder holding other "
        "files is refused unless --overwrite."))],
    layout: Annotated[str, typer.Option(help="hf | llada | dream")] = "hf",
    storage_dtype: Annotated[str, typer.Option(
        "--storage-dtype", help="Stored precision (not --dtype, the compute dtype of other commands): auto (as "
                                "the source) | float32 | bfloat16 | float16 | int8 (matrices as int8 with a "
                                "float16 scale per row, loaded as floats; hf layout only)")] = "auto",
    shards: Annotated[int, typer.Option(help="Number of safetensors files.")] = 1,
    decode_block_size: Annotated[Optional[int], typer.Option(
        help="LLaDA/Dream-style models: store the block size their decoders use unless one is given "
             "(default: keep the source's, else 32).")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Write into a folder holding other files: replace only the files an export "
                            "writes (config, weights, tokenizer, training records); keep every other file.")] = False,
    old_dtype: Annotated[Optional[str], renamed(  # noqa: ARG001 (refused in its callback)
        "--dtype", "--storage-dtype", "the stored precision; --dtype is the compute dtype of the commands that run a model"
    )] = None,
) -> None:
    """Write a model in another layout or precision (with tokenizer and training records).

    The export is written beside --out and moved into place only once complete: a failed export
    leaves --out as it was."""
    from d3llm.files import check_out_folder
    from d3llm.models import resolve_model
    from d3llm.models.checkpoint import export_model

    if layout not in ("hf", "llada", "dream"):
        fail(f"`--layout` must be hf, llada or dream, got {layout!r}")
    if shards < 1:
        fail(f"`--shards` must be >= 1, got {shards}")
    if decode_block_size is not None and not 1 <= decode_block_size <= 1 << 20:
        fail(f"`--decode-block-size` must be >= 1 and at most {1 << 20} (tokens), got {decode_block_size}")
    check_out_folder(out)
    try:
        folder = export_model(resolve_model(source), out, layout=layout, dtype=_torch_dtype(storage_dtype),
                              shards=shards, overwrite=overwrite, decode_block_size=decode_block_size)
    except ValueError as exc:  # e.g. a tensor the layout has no place for
        fail(str(exc))
    typer.echo(f"written to {folder}")
