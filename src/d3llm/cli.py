"""The `d3llm` command. It parses arguments, calls the library, and prints; no logic lives here.

Every user error (a `D3llmError`) is printed as one line on stderr with exit code 2. Help is
plain text (`-h` or `--help`): rich markup would swallow `[...]` in help texts and show a
value for flags. Torch is imported by the commands that need it, not here: `d3llm models`,
`-h` and `--version` stay fast (deliberate imports inside functions, which
tests/unit/test_structure.py allows in this module).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.main

from d3llm.cli_help import tidy as tidy_help
from d3llm.errors import D3llmError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]},
                  help="d3llm: ultra-fast diffusion language models.")


def _print_version(value: bool) -> None:
    if value:
        from d3llm.version import code_version

        typer.echo(f"d3llm {code_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[Optional[bool], typer.Option(  # noqa: ARG001 (handled by the callback)
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = None,
) -> None:
    """d3llm: ultra-fast diffusion language models."""


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(2)


def _out_folder(path: Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be one or cannot be written, before any work is done."""
    from d3llm.files import check_out_folder

    check_out_folder(path, option)


def _out_file(path: Path, option: str, overwrite: bool = False, ours=None) -> None:
    """Refuse an output file that cannot be written, or that is a user's (not `ours`) unless
    --overwrite, before any work."""
    from d3llm.files import check_out_file

    check_out_file(path, option, overwrite, ours)


OVERWRITE_HELP = "Replace files in the output that this command did not write (without it, refuse)."


def _check_alpha(alpha: float) -> None:
    import math

    if not (math.isfinite(alpha) and alpha >= 0):
        raise D3llmError(f"--alpha must be a finite number >= 0 (the authors' 3), got {alpha}")


def _torch_dtype(name: str):
    """`d3llm export --storage-dtype`: the stored precision (auto: as the source), not a compute dtype."""
    import torch

    choices = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
               "int8": torch.int8}
    if name not in choices:
        _fail(f"`--storage-dtype` must be one of {', '.join(choices)}, got {name!r}")
    return choices[name]


def _renamed(old: str, new: str, meaning: str):
    """A hidden option for a spelling that meant something else in other commands: given, it is a
    one-line error naming the new spelling (exit 2), before any other check. Kept apart so one
    name has one meaning in every command (`--set`: decode settings, `--dtype`: compute dtype)."""

    def refuse(value):
        if value:
            given = value[0] if isinstance(value, (list, tuple)) else value
            raise D3llmError(f"{old} is now {new} in this command ({meaning}); give {new} {given}")
        return value

    return typer.Option(old, hidden=True, is_eager=True, callback=refuse, show_default=False)


# Every command that decodes a batch of prompts decodes 16 at a time unless told (the recorded
# results in results/current were measured so; the training runs' validation uses 16 too).
BATCH_SIZE = 16
BATCH_HELP = "Prompts decoded together (the same default in eval, sweep and trajectories)."
# --teacher names a model's role; -m/--model, every other command's spelling, is accepted beside it.
TEACHER_NAMES = ("--teacher", "-t", "--model", "-m")
SET_HELP = "Override a decode setting, e.g. --set threshold=0.4 --set cache=delayed (repeatable)."
MODEL_HELP = "Bundled model name (see `d3llm models`), model folder, or Hugging Face hub id ORG/NAME[@REVISION]."
METHOD_HELP = "Decode preset (default: d3llm for LLaDA/Dream-style, d3llm-block for block models, ar for AR models)."
CANVAS_HELP = "Response length (canvas). [default: the preset's max_new_tokens, 64]"
# One spelling of --device / --dtype for every command that loads a model (vLLM and SGLang's).
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps; auto: CUDA if "
                                     "available, else MPS, else the CPU.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16; auto: bfloat16 on a "
                                    "CUDA GPU that supports it, float16 on other GPUs and MPS, float32 on the CPU.")]


def _placement(device: str, dtype: str):
    """(torch.device, torch.dtype) of --device / --dtype; a bad choice is a one-line error."""
    from d3llm.models.loading import resolve_device_dtype

    return resolve_device_dtype(device, dtype, names=("--device", "--dtype"))


def _load(model: str, device: str, dtype: str):
    from d3llm.models import load_model

    where, precision = _placement(device, dtype)
    return load_model(model, device=where, dtype=precision)


def _one_model(positional: str | None, option: str | None) -> str:
    """MODEL as vLLM's `serve MODEL` or as --model; exactly one of the two."""
    if positional is not None and option is not None and positional != option:
        raise D3llmError(f"MODEL given twice ({positional!r} and --model {option!r}); give one")
    if positional is None and option is None:
        raise D3llmError("Missing MODEL: give a bundled name, a model folder or a hub id, e.g. tiny-d3llm "
                         "(or --model tiny-d3llm)")
    return positional or option


def _decode_config(method: str | None, family: str, max_new_tokens: int | None, settings: list[str],
                   recipe: tuple[str, dict] | None = None, **options):
    """The decode config of --method (None: the model's published `recipe`, else the family's
    default), the first-class options (--threshold, ...; None: not given) and --set NAME=VALUE
    (which wins, as the most specific)."""
    from d3llm.decode.config import parse_overrides, resolve_config

    fixed = {k: v for k, v in {"max_new_tokens": max_new_tokens, **options}.items() if v is not None}
    return resolve_config(method, family, recipe, **{**fixed, **parse_overrides(settings)})  # --set wins


def _prompt_text(prompt: str) -> str:
    """PROMPT, or standard input for `-` (as `cat`, `llm` and `ollama run` read it)."""
    from_stdin = prompt == "-"
    if from_stdin:
        if sys.stdin.isatty():
            typer.echo("reading the prompt from standard input (end with Ctrl-D)", err=True)
        prompt = sys.stdin.read().rstrip("\n")
    if not prompt.strip():
        _fail("the prompt is empty" + (" (standard input held no text)" if from_stdin else ""))
    return prompt


THRESHOLD_HELP = "Commit every token whose entropy (confidence for fast-dllm) passes this; = --set threshold=X."
TEMPERATURE_HELP = "Sampling temperature (0: greedy, the default); = --set temperature=X."
BLOCK_SIZE_HELP = "Tokens per block (LLaDA/Dream-style models); = --set block_size=N."


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="The user message; - reads it from standard input.")],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    method: Annotated[Optional[str], typer.Option(help="Decode preset (default: d3llm for dLLMs, "
                                                  "d3llm-block for block models, ar for AR models).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    temperature: Annotated[Optional[float], typer.Option(help=TEMPERATURE_HELP)] = None,
    threshold: Annotated[Optional[float], typer.Option(help=THRESHOLD_HELP)] = None,
    block_size: Annotated[Optional[int], typer.Option(help=BLOCK_SIZE_HELP)] = None,
    settings: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    device: Device = "auto",
    dtype: Dtype = "auto",
    stream: Annotated[bool, typer.Option("--stream", help="Print text as soon as it is final.")] = False,
    stats: Annotated[bool, typer.Option("--stats", help="Print NFE, TPF and tokens/s.")] = False,
) -> None:
    """Load a model and answer PROMPT."""
    from d3llm.decode import final_prefix_lengths, generate as decode
    from d3llm.models.tokenizer import prompt_ids

    prompt = _prompt_text(prompt)
    lm = _load(model, device, dtype)
    config = _decode_config(method, lm.facts.family, max_new_tokens, settings, lm.recipe, temperature=temperature,
                            threshold=threshold, block_size=block_size)
    ids = prompt_ids(lm.tokenizer, prompt)
    shown = [""]

    def show_final_text(state) -> None:
        final = int(final_prefix_lengths(state)[0])
        text = lm.tokenizer.decode(state.response[0, :final].tolist(), skip_special_tokens=True)
        if len(text) > len(shown[0]) and text.startswith(shown[0]):
            typer.echo(text[len(shown[0]):], nl=False)
            shown[0] = text

    out = decode(lm.model, [ids], config, lm.tokenizer.pad_token_id,
                 on_step=show_final_text if stream else None)
    answer = lm.tokenizer.decode(out.sequences[0], skip_special_tokens=True)
    typer.echo(answer[len(shown[0]):] if answer.startswith(shown[0]) else answer)
    sys.stdout.flush()  # the answer and its newline before the statistics on stderr
    if stats:
        tps = sum(out.num_tokens) / max(out.seconds, 1e-9)
        typer.echo(f"[{config.method}] tokens={sum(out.num_tokens)} nfe={out.nfe} "
                   f"tpf={out.tokens_per_forward:.2f} tokens/s={tps:.1f}", err=True)


@app.command()
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
    from d3llm.train.config import TrainConfig
    from d3llm.progress import progress_bar
    from d3llm.train.recipes import check_sources
    from d3llm.train.trainer import claim_out, train as run

    _out_folder(out)
    claim_out(out, overwrite)
    overrides = {k: v for k, v in {"steps": steps, "threads": threads}.items() if v is not None}
    recipe = TrainConfig.from_yaml(config, **overrides)
    check_sources(config, recipe)  # a recipe that starts from another's output says which, now
    with progress_bar(None, "train") as bar:
        folder = run(recipe, out, command=["d3llm", *sys.argv[1:]], stop_at=stop_at, progress=bar.phase,
                     overwrite=overwrite)
    typer.echo(f"model written to {folder}")


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


trajectories_app = typer.Typer(invoke_without_command=True, rich_markup_mode=None,
                                context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(trajectories_app, name="trajectories")


@trajectories_app.callback()
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
    _out_folder(out)
    claim_out(out, overwrite)
    where, precision = _placement(device, dtype)
    counts = {}
    for name, n in _key_values(tasks, "--task").items():
        check_count(n, f"--task {name}=N: N", low=1)
        counts[name.replace("_", "-")] = n
    with progress_bar(None, "teacher rollouts") as bar:
        folder = run(teacher, counts, out, split=split, seed=seed, max_new_tokens=max_new_tokens, block_size=block_size,
                     chunk_size=chunk_size, batch_size=batch_size, device=where, dtype=precision, progress=bar.phase)
    typer.echo(f"trajectories in {folder}")


@trajectories_app.command("import")
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
    from d3llm.trajectory.official import import_official

    _out_folder(out)
    typer.echo(f"trajectories in {import_official(source, out, teacher, chunk_size=chunk_size)}")


@trajectories_app.command("export")
def trajectories_export(
    folder: Annotated[Path, typer.Argument(help="Trajectory folder (d3llm trajectories or import).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="A new or empty folder for the dataset.")],
    fmt: Annotated[str, typer.Option("--format", help="d3llm-official: the authors' save_to_disk dataset.")] = (
        "d3llm-official"),
    teacher: Annotated[Optional[str], typer.Option(*TEACHER_NAMES, help=(
        "Model whose tokenizer decodes the texts (default: the folder's teacher)."))] = None,
) -> None:
    """Write a trajectory folder in the d3LLM authors' format (one snapshot per step)."""
    from d3llm.trajectory.official import export_official

    if fmt != "d3llm-official":
        _fail(f"`--format` must be d3llm-official, got {fmt!r}")
    _out_folder(out)
    typer.echo(f"dataset written to {export_official(folder, out, teacher)}")


@app.command()
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
    old_set: Annotated[list[str], _renamed(  # noqa: ARG001 (refused in its callback)
        "--set", "--train-set", "training settings; --set sets decode settings in generate, eval, sweep and chat"
    )] = [],  # noqa: B006
) -> None:
    """Distil a d3LLM student from a teacher's trajectories; killed, the same command resumes."""
    from d3llm.progress import progress_bar
    from d3llm.train.config import read_yaml_mapping
    from d3llm.train.distill import distill_config
    from d3llm.train.trainer import claim_out, train as run

    _out_folder(out)
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


def _per_task_json(path: Path, task: str, several: bool) -> Path:
    """`--json FILE`: FILE itself for one task; FILE's stem plus the task name for several
    (r.json -> r-arith.json, r-code.json), so every file stays one `d3llm leaderboard` record."""
    import re

    if not several:
        return path
    return path.with_name(f"{path.stem}-{re.sub(r'[^A-Za-z0-9._-]+', '_', task)}{path.suffix or '.json'}")


@app.command("eval")
def eval_(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    tasks: Annotated[list[str], typer.Option("--task", help="arith | arith-long | code | arith:medium | gsm8k:PATH; "
                                             "repeatable: one result per task.")],
    method: Annotated[Optional[str], typer.Option(help=METHOD_HELP)] = None,
    temperature: Annotated[Optional[float], typer.Option(help=TEMPERATURE_HELP)] = None,
    threshold: Annotated[Optional[float], typer.Option(help=THRESHOLD_HELP)] = None,
    block_size: Annotated[Optional[int], typer.Option(help=BLOCK_SIZE_HELP)] = None,
    settings: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    n: Annotated[int, typer.Option(help="Test problems per task, >= 1 (a GSM8K file with fewer is used whole).")] = 100,
    seed: Annotated[int, typer.Option(help="Which problems are drawn.")] = 0,
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = BATCH_SIZE,
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help=(
        "Write the result record here; with several --task, one file per task named FILE's stem plus "
        "the task (r.json -> r-arith.json, r-code.json)."))] = None,
    log_samples: Annotated[Optional[Path], typer.Option("--log-samples", help=(
        "Write one JSON line per problem here (task, prompt, response, extracted and reference answer, "
        "correct, the row's NFE and TPF)."))] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Decode N problems of each task, score them, report accuracy, TPF and tokens/s (one line per task)."""
    from d3llm.eval.results import written_as_samples, written_by_eval
    from d3llm.eval.runner import clamp_n, evaluate
    from d3llm.files import write_atomic
    from d3llm.progress import progress_bar
    from d3llm.tasks import get_task
    from d3llm.tasks.base import check_count, check_split

    if n < 1:
        _fail(f"`--n` must be >= 1 (problems per task), got {n}")
    check_count(n, "`--n`", low=1)
    if batch_size < 1:
        _fail(f"`--batch-size` must be >= 1 (problems decoded together), got {batch_size}")
    the_tasks = [get_task(t) for t in dict.fromkeys(tasks)]  # unknown tasks fail before the model loads
    names = [t.name for t in the_tasks]
    if len(set(names)) < len(names):
        _fail(f"--task {', '.join(tasks)}: two tasks share the name {max(names, key=names.count)!r} "
              "(their results would be indistinguishable); evaluate them in separate runs")
    for name in names if json_out else ():  # a result that cannot be written fails now, not after evaluating
        _out_file(_per_task_json(json_out, name, len(names) > 1), "--json", overwrite, written_by_eval)
    if log_samples:
        _out_file(log_samples, "--log-samples", overwrite, written_as_samples)
    split = check_split(split)
    counts = {}
    for the_task in the_tasks:
        counts[the_task.name], note = clamp_n(the_task, split, n)
        if note:
            typer.echo(f"note: {note}", err=True)
    lm = _load(model, device, dtype)
    config = _decode_config(method, lm.facts.family, max_new_tokens, settings, lm.recipe, temperature=temperature,
                            threshold=threshold, block_size=block_size)
    samples: list[dict] | None = [] if log_samples else None
    results = []
    with progress_bar(sum(counts.values()), "eval") as bar:  # on stderr: stdout holds only the results
        for the_task in the_tasks:
            bar.describe(f"{the_task.name} / {config.method}")
            results.append(evaluate(lm, the_task, config, n=counts[the_task.name], seed=seed, split=split,
                                    batch_size=batch_size, progress=bar.advance, samples=samples))
    for result in results:
        if json_out:
            path = _per_task_json(json_out, result.task, len(results) > 1)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps(result.to_dict(), indent=2))
        typer.echo(f"{result.model} {result.task} {result.method}: accuracy {result.accuracy_pct:.1f}% "
                   f"(n={result.n}), TPF {result.tokens_per_forward:.2f}, {result.tokens_per_second:.1f} tokens/s")
    if log_samples:
        log_samples.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(log_samples, "".join(json.dumps(record) + "\n" for record in samples))
        typer.echo(f"{len(samples)} samples written to {log_samples}", err=True)


@app.command()
def demo(
    n: Annotated[int, typer.Option(help="Test problems per task.")] = 10,
    seed: Annotated[int, typer.Option(help="Which problems are drawn.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for result files, leaderboard and plots.")] = Path("runs/demo"),
    tasks: Annotated[list[str], typer.Option("--task", help="Only these tasks (repeatable; default: all).")] = [],  # noqa: B006
    methods: Annotated[list[str], typer.Option("--method", help="Only these diffusion presets (repeatable; "
                                               "default: all); the AR baseline always runs.")] = [],  # noqa: B006
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Every bundled model on every task: accuracy, TPF, tokens/s and AUP in one table, the AR
    baseline comparison, and the result files, leaderboard and plots written to OUT."""
    from rich.console import Console

    from d3llm.eval.demo import demo_plan, run_demo, write_demo
    from d3llm.eval.plots import matplotlib_available
    from d3llm.eval.report import terminal_tables
    from d3llm.progress import progress_bar

    from d3llm.tasks.base import check_count

    check_count(n, "`--n`", low=1)
    _out_folder(out)
    where, precision = _placement(device, dtype)
    console = Console()
    with progress_bar(len(demo_plan(tasks, methods)) * n, "demo") as bar:  # problems, all rows
        results = run_demo(n=n, seed=seed, progress=bar.describe, advance=bar.advance,
                           tasks=tasks, methods=methods, device=where, dtype=precision)
    report = write_demo(results, out, plots=matplotlib_available())
    for table in terminal_tables(report.board, n, seed):
        console.print(table)
    for comparison in report.comparisons:
        console.print(comparison.sentence(), highlight=False)
    if not report.comparisons:
        console.print("no AR baseline to compare with (the bundled models are all of one kind)")
    if not matplotlib_available():
        console.print("plots skipped: matplotlib is not installed (pip install 'd3llm[plot]')")
    console.print(f"results in {out / 'results'}; leaderboard: " + ", ".join(str(f) for f in report.files),
                  highlight=False)


@app.command()
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
    old_dtype: Annotated[Optional[str], _renamed(  # noqa: ARG001 (refused in its callback)
        "--dtype", "--storage-dtype", "the stored precision; --dtype is the compute dtype of the commands that run a model"
    )] = None,
) -> None:
    """Write a model in another layout or precision (with tokenizer and training records).

    The export is written beside --out and moved into place only once complete: a failed export
    leaves --out as it was."""
    from d3llm.models import resolve_model
    from d3llm.models.checkpoint import export_model

    if layout not in ("hf", "llada", "dream"):
        _fail(f"`--layout` must be hf, llada or dream, got {layout!r}")
    if shards < 1:
        _fail(f"`--shards` must be >= 1, got {shards}")
    if decode_block_size is not None and not 1 <= decode_block_size <= 1 << 20:
        _fail(f"`--decode-block-size` must be >= 1 and at most {1 << 20} (tokens), got {decode_block_size}")
    _out_folder(out)
    try:
        folder = export_model(resolve_model(source), out, layout=layout, dtype=_torch_dtype(storage_dtype),
                              shards=shards, overwrite=overwrite, decode_block_size=decode_block_size)
    except ValueError as exc:  # e.g. a tensor the layout has no place for
        _fail(str(exc))
    typer.echo(f"written to {folder}")


@app.command()
def sweep(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    task: Annotated[list[str], typer.Option(help="Task name (one per sweep).")],
    params: Annotated[list[str], typer.Option("--param", help="NAME=V1,V2,... (repeatable: a grid).")],
    out: Annotated[Path, typer.Option("--out", "-o", help=(
        "Folder for point files and curve.json; run again to resume (only a sweep of the same settings)."))],
    method: Annotated[str, typer.Option(help="Decode preset.")] = "d3llm",
    settings: Annotated[list[str], typer.Option("--set", help="Fix a decode setting at every point, e.g. "
                                                "--set block_size=16 (repeatable).")] = [],  # noqa: B006
    n: Annotated[int, typer.Option(help="Test problems per point.")] = 100,
    seed: Annotated[int, typer.Option(help="Which problems are drawn.")] = 0,
    split: Annotated[str, typer.Option(help="train | validation | test")] = "test",
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    batch_size: Annotated[int, typer.Option(help=BATCH_HELP)] = BATCH_SIZE,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=(
        "Replace the sweep files in --out (point-*.json, curve.json) when they hold a sweep of "
        "other settings (model, task, method, n, seed, split, --set, grid, dtype); without it, refuse."))] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Evaluate a preset over a grid of settings; one results file per point plus the curve."""
    from d3llm.decode.config import parse_overrides
    import math

    from d3llm.eval.sweep import parse_grid, points_table, sweep as run_sweep
    from d3llm.progress import progress_bar
    from d3llm.tasks import get_task

    from d3llm.tasks.base import check_count

    check_count(n, "`--n`", low=1)
    if batch_size < 1:
        _fail(f"`--batch-size` must be >= 1, got {batch_size}")
    _out_folder(out)
    if len(task) > 1:  # click keeps the last of a repeated option; a sweep is of one task
        _fail(f"--task given {len(task)} times ({', '.join(task)}); a sweep covers one task: run one sweep "
              "per task, each with its own --out")
    grid = parse_grid(params)
    fixed = parse_overrides(settings)
    the_task = get_task(task[0])
    lm = _load(model, device, dtype)
    points = math.prod(len(values) for values in grid.values())
    with progress_bar(points * n, "sweep") as bar:
        records = run_sweep(lm, the_task, method, grid, n=n, seed=seed, out=out, max_new_tokens=max_new_tokens,
                            batch_size=batch_size, progress=lambda p: bar.describe(f"{the_task.name} {p}"),
                            advance=bar.advance, split=split, settings=fixed, overwrite=overwrite)
    typer.echo(points_table(records))
    typer.echo(f"curve written to {out / 'curve.json'}")


@app.command()
def aup(
    table: Annotated[Path, typer.Argument(help="YAML/JSON: task -> method -> [[tpf, accuracy_pct], ...]")],
    alpha: Annotated[float, typer.Option(help="Weight steepness (the authors' 3).")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """AUP per method and task, the y_max used per task, and each method's mean over the tasks
    every method has (named in the mean column's header)."""
    from rich.console import Console
    from rich.table import Table

    from d3llm.metrics.aup import aup_table, read_table

    _check_alpha(alpha)
    result = aup_table(read_table(table), alpha=alpha)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    tasks, common = list(result["aup"]), result["mean_tasks"]
    if len(common) == len(tasks):
        mean_header, mean_note = "mean", f"mean over all {len(tasks)} tasks"
    elif common:
        mean_header = f"mean ({', '.join(common)})"
        mean_note = f"mean over the tasks every method has ({', '.join(common)}), so means compare alike"
    else:
        mean_header, mean_note = "mean", "no task has every method, so no mean"
    typer.echo(f"AUP (alpha={alpha:g}) per method and task; y_max per task: "
               + ", ".join(f"{t} {result['y_max'][t]:g}%" for t in tasks))
    view = Table()
    view.add_column("method")
    for task in tasks:
        view.add_column(task, justify="right")
    view.add_column(mean_header, justify="right")
    for method, mean in result["mean"].items():
        cells = [f"{result['aup'][t][method]:.1f}" if method in result["aup"][t] else "n/a" for t in tasks]
        view.add_row(method, *cells, "n/a" if mean is None else f"{mean:.1f}")
    Console().print(view)
    typer.echo("AUP integrates accuracy % (weighted against y_max, the task's best accuracy) over tokens "
               "per forward, so it exceeds 100 when TPF > 1.")
    typer.echo(f"n/a: not scored; {mean_note}.")


@app.command()
def leaderboard(
    results: Annotated[list[Path], typer.Argument(help="Result files (d3llm eval --json, d3llm sweep) or folders of them.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for leaderboard.md, leaderboard.json and plots.")],
    allow_mixed: Annotated[bool, typer.Option("--allow-mixed", help="Compare results of one task measured with "
                                              "different n, seed or split.")] = False,
    alpha: Annotated[float, typer.Option(help="AUP weight steepness (the authors' 3).")] = 3.0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw accuracy-vs-TPF and AUP PNGs.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
) -> None:
    """Compare results by task and (model, method): accuracy, TPF, tokens/s and AUP as
    Markdown, JSON and plots; prints the Markdown."""
    from d3llm.eval.leaderboard import build_leaderboard, load_results
    from d3llm.eval.report import claim_out, write_leaderboard

    _check_alpha(alpha)
    _out_folder(out)
    claim_out(out, overwrite)
    board = build_leaderboard(load_results(results), allow_mixed=allow_mixed, alpha=alpha)
    files = write_leaderboard(board, out, plots=plots)
    typer.echo(board.to_markdown())
    typer.echo("written: " + ", ".join(map(str, files)), err=True)


@app.command()
def serve(
    model_arg: Annotated[Optional[str], typer.Argument(help=MODEL_HELP + " Or give it as --model.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    method: Annotated[Optional[str], typer.Option(help="Default " + METHOD_HELP[0].lower() + METHOD_HELP[1:])] = None,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="D3LLM_API_KEY",
                                                   help="Require `Authorization: Bearer KEY`.")] = None,
    max_batch: Annotated[int, typer.Option(help=(
        "Requests decoded together at most: a cap on dynamic batches, not the fixed --batch-size (16) "
        "of eval, sweep and trajectories."))] = 8,
    max_wait_ms: Annotated[float, typer.Option(help="How long a request may wait to be batched.")] = 10.0,
    max_queue: Annotated[int, typer.Option(help="Waiting requests before new ones get 503.")] = 256,
    max_tokens_limit: Annotated[int, typer.Option(help="Largest `max_tokens` a request may ask for.")] = 512,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body in bytes; more is refused with "
                                                     "413 before it is parsed.")] = 4 << 20,
    device: Device = "auto",
    dtype: Dtype = "auto",
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error; info logs one line per "
                                                "request and a throughput line every 10 s.")] = "info",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API, batched and streaming.

    /v1/completions, /v1/chat/completions, /v1/models, /health, /version and /metrics
    (Prometheus); see docs/reference.md, "Serving"."""
    from d3llm.decode.config import METHODS
    from d3llm.serve import create_app, run_server
    from d3llm.serve.server import listen

    model = _one_model(model_arg, model)
    levels = ("debug", "info", "warning", "error")
    if log_level.lower() not in levels:
        raise D3llmError(f"--log-level must be one of {', '.join(levels)}, got {log_level!r}")
    log_level = log_level.lower()
    if not 1 <= port <= 65535:
        raise D3llmError(f"--port must be in 1..65535, got {port}")
    if method is not None and method not in METHODS:
        raise D3llmError(f"--method {method!r} is unknown; choose one of {', '.join(METHODS)}")
    for option, value in (("--max-batch", max_batch), ("--max-queue", max_queue),
                          ("--max-tokens-limit", max_tokens_limit), ("--max-body-bytes", max_body_bytes)):
        if value < 1:
            raise D3llmError(f"{option} must be >= 1, got {value}")
    if not 0 <= max_wait_ms <= 60_000:  # NaN fails too
        raise D3llmError(f"--max-wait-ms must be in 0..60000 (milliseconds), got {max_wait_ms}")
    _placement(device, dtype)  # a bad --device / --dtype is the first error
    sock = listen(host, port)  # a port in use fails here, in one line, before the model loads
    try:
        lm = _load(model, device, dtype)
        server = create_app(lm, method, api_key=api_key, max_batch=max_batch, max_wait_ms=max_wait_ms,
                            max_queue=max_queue, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes)
    except BaseException:
        sock.close()
        raise
    level = getattr(logging, log_level.upper())  # the server's own log: timestamps, d3llm at --log-level
    logging.basicConfig(level=max(level, logging.WARNING), force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("d3llm").setLevel(level)
    placement = f"{lm.model.device}, {str(lm.model.dtype).removeprefix('torch.')}"
    typer.echo(f"serving {server.state.service.model_id} ({placement}) at http://{host}:{port}/v1 (Ctrl-C stops)",
               err=True)
    run_server(server, host, port, api_key, sock=sock, log_level=log_level)


@app.command()
def chat(
    model_arg: Annotated[Optional[str], typer.Argument(help=MODEL_HELP + " Or give it as --model.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    method: Annotated[Optional[str], typer.Option(help=METHOD_HELP)] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help=CANVAS_HELP)] = None,
    temperature: Annotated[Optional[float], typer.Option(help=TEMPERATURE_HELP)] = None,
    threshold: Annotated[Optional[float], typer.Option(help=THRESHOLD_HELP)] = None,
    block_size: Annotated[Optional[int], typer.Option(help=BLOCK_SIZE_HELP)] = None,
    settings: Annotated[list[str], typer.Option("--set", help=SET_HELP)] = [],  # noqa: B006
    history: Annotated[Optional[bool], typer.Option("--history/--no-history", help=(
        "Send the conversation so far with each message (default: yes, except for the bundled models, "
        "which are single-turn: each message is answered on its own)."), show_default=False)] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
) -> None:
    """Talk to a model in the terminal, answers streamed, with NFE, TPF and tokens/s.

    Reads one message per line (with line editing and history on a terminal); /help lists the
    commands: /reset starts a new conversation, /exit (or end of input) quits; Ctrl-C cancels
    the answer being written."""
    from d3llm.decode.config import DecodeConfig, parse_overrides
    from d3llm.serve.chat import ChatSession, banner, repl

    model = _one_model(model_arg, model)
    if max_new_tokens is not None and max_new_tokens < 1:
        _fail(f"`--max-new-tokens` must be >= 1, got {max_new_tokens}")
    first_class = {"temperature": temperature, "threshold": threshold, "block_size": block_size}
    overrides = {**{k: v for k, v in first_class.items() if v is not None}, **parse_overrides(settings)}  # --set wins
    interactive = sys.stdin.isatty()  # piped questions get answers only
    if interactive:
        typer.echo(f"loading {model} ...", err=True)  # at once: loading takes seconds
    lm = _load(model, device, dtype)
    recipe = (lm.recipe or (None, {}))[1]  # a published checkpoint's canvas, else every preset's
    canvas = max_new_tokens if max_new_tokens is not None else recipe.get("max_new_tokens", DecodeConfig.max_new_tokens)
    with ChatSession(lm, method, canvas, history=history, **overrides) as session:
        if interactive:
            typer.echo(banner(session), err=True)
        repl(session)


@app.command()
def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    published: Annotated[bool, typer.Option("--published", help=(
        "List the published checkpoints d3llm loads by hub id instead (family, parameters, the method and "
        "settings their papers decoded with, which commands use unless --method is given)."))] = False,
) -> None:
    """List the bundled models: family, parameters, the method commands decode with unless
    --method is given, the block size they decode in unless `--set block_size` is given, and
    the final validation accuracy % of their training run (per task, with the preset and
    problems it was measured with; provenance.json)."""
    from dataclasses import asdict

    from d3llm.models.catalog import bundled_models, describe, models_table  # no torch: fast

    if published:
        from d3llm.models.published import published_models, published_table

        typer.echo(json.dumps([asdict(m) for m in published_models()], indent=2) if as_json else published_table())
        return
    summaries = [describe(path, name) for name, path in bundled_models().items()]
    if as_json:
        typer.echo(json.dumps([{**asdict(s), "path": str(s.path)} for s in summaries], indent=2))
        return
    if not summaries:
        typer.echo("no bundled models are installed")
        return
    for line in models_table(summaries):
        typer.echo(line)


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def _usage_errors() -> tuple[type, ...]:
    """Usage-error classes: typer >= 0.29 has its own click (`typer.TyperException`), older ones click's."""
    found = [getattr(typer, "TyperException", None)]
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(t for t in found if t is not None)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        command = typer.main.get_command(app)
        tidy_help(command)  # metavars, summaries, examples (d3llm/cli_help.py)
        code = command.main(prog_name="d3llm", standalone_mode=False)  # also under `python -m d3llm.cli` and torchrun
    except D3llmError as exc:
        typer.secho(f"error: {_one_line(exc)}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except _usage_errors() as exc:  # a bad option value, a missing option: one line too
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `d3llm`: the help
            exc.show()
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        hint = f" Try '{ctx.command_path} -h' for help." if ctx is not None else ""
        message = _one_line(exc.format_message())
        typer.secho(f"error: {message}{'' if message.endswith('.') else '.'}{hint}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.secho("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
