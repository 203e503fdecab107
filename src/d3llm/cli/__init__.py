"""The `d3llm` command. It parses arguments, calls the library, and prints; no logic lives here.

This module holds the typer `app`, registers the commands and runs them (`main`, the console
script); the commands live by group in `decoding` (generate, chat, serve), `training` (train,
trajectories, distill, export), `evaluation` (eval, demo, sweep, aup, leaderboard) and `models`;
`common` has what they share, `help` how the help reads.

Every user error (a `D3llmError`) is printed as one line on stderr with exit code 2. Help is
plain text (`-h` or `--help`): rich markup would swallow `[...]` in help texts and show a
value for flags. Torch is imported by the commands that need it, when they run: `d3llm models`,
`-h` and `--version` stay fast (deliberate imports inside functions, which
tests/unit/test_structure.py allows in these modules).
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Optional

import typer
import typer.main

from d3llm.cli import decoding, evaluation, models, training, tuning
from d3llm.cli.help import tidy as tidy_help
from d3llm.errors import D3llmError

HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, context_settings=HELP_OPTIONS,
                  help="d3llm: ultra-fast diffusion language models.")

# In the order `d3llm -h` lists them (trajectories, a group, comes last).
COMMANDS = {
    "generate": decoding.generate, "train": training.train, "distill": training.distill, "eval": evaluation.eval_,
    "demo": evaluation.demo, "export": training.export, "sweep": evaluation.sweep, "aup": evaluation.aup,
    "leaderboard": evaluation.leaderboard, "tune": tuning.tune, "serve": decoding.serve, "chat": decoding.chat,
    "models": models.models,
}
for name, command in COMMANDS.items():
    app.command(name)(command)

trajectories_app = typer.Typer(invoke_without_command=True, rich_markup_mode=None, context_settings=HELP_OPTIONS)
trajectories_app.callback()(training.trajectories)
trajectories_app.command("import")(training.trajectories_import)
trajectories_app.command("export")(training.trajectories_export)
app.add_typer(trajectories_app, name="trajectories")


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
        tidy_help(command)  # metavars, summaries, examples (d3llm/cli/help.py)
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
