"""`d3llm tune`: choose a model's decode recipe on the validation split (d3llm.eval.tune) and,
with --save, store it beside the model's weights (d3llm.models.recipe)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from d3llm.cli.common import MODEL_HELP, Device, Dtype, load
from d3llm.errors import D3llmError


def tune(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    task: Annotated[Optional[list[str]], typer.Option(help="Validation task (repeatable; default: every task).")] = None,
    n: Annotated[int, typer.Option(help="Validation problems per task and grid point.")] = 100,
    save: Annotated[bool, typer.Option("--save", help="Write the recipe into the model's folder "
                                                      "(decode_recipe.json).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="With --save: replace the model's recipe.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help=(
        "Folder for the scores of the points done so far (scores.json; default runs/tune-MODEL): a killed "
        "tune run again with the same settings scores only the points it lacks."))] = None,
    device: Device = "auto",
    dtype: Dtype = "float32",
) -> None:
    """Score the model's presets over a fixed grid of thresholds (and cache schedules) on
    validation problems, and choose its recipe: of the points within 1 accuracy point of the
    best, the fastest at batch 1 (median of interleaved timing rounds), then (for a grid scored
    in float32, the default) bfloat16 if that stays within and is faster; then the same rule on
    each task over the chosen point's thresholds (a task where it picks another threshold gets
    its own, listed in the recipe). The test split is never read. Each point's score is kept in
    OUT as it finishes, so a killed tune resumes. With --save, generate / eval / serve / chat /
    demo then decode the model with it unless --method is given (eval and demo with a task's
    own settings on that task)."""
    from rich.console import Console

    from d3llm.eval.report import tune_table
    from d3llm.eval.tune import points_to_score, tune as choose_recipe
    from d3llm.files import check_out_folder
    from d3llm.models.loading import resolve_model
    from d3llm.models.recipe import RECIPE_FILE, write_recipe
    from d3llm.progress import progress_bar
    from d3llm.tasks import TASK_NAMES, get_task
    from d3llm.tasks.base import check_count

    check_count(n, "`--n`", low=1)
    tasks = [get_task(t) for t in dict.fromkeys(task or TASK_NAMES)]
    folder = resolve_model(model)
    if save and (folder / RECIPE_FILE).exists() and not overwrite:  # fail before an hour of scoring
        raise D3llmError(f"--save: {folder / RECIPE_FILE} exists; give --overwrite to replace the model's recipe")
    scores = (out or Path("runs") / f"tune-{folder.name}") / "scores.json"
    check_out_folder(scores.parent)
    lm = load(model, device, dtype)
    with progress_bar(points_to_score(lm) * len(tasks) * n, "tune") as bar:
        recipe, points = choose_recipe(lm, tasks, n, progress=bar.describe, advance=bar.advance,
                                       progress_file=scores, more=bar.grow)
    # a column per task: too wide for 80 columns; piped to a file or a log, keep each row on one line
    Console(width=None if sys.stdout.isatty() else 200).print(tune_table(points, recipe))
    typer.echo(f"recipe: {recipe.text()}")
    if save:
        typer.echo(f"wrote {write_recipe(folder, recipe, overwrite)}")
