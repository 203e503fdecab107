"""`d3llm models`: the bundled models (or the published checkpoints d3llm loads by hub id), as a
table or JSON. Reads their records only: no torch import, so it answers at once."""

from __future__ import annotations

import json
from typing import Annotated

import typer


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
