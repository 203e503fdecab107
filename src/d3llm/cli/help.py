"""How the `d3llm` command's help reads: metavars, one-line summaries, examples.

`tidy(command)` takes the click command that typer builds from `d3llm.cli.app` and, before it
runs, gives every option a metavar that says what to type (`--model MODEL`, `--set NAME=VALUE`)
instead of a Python type (`<str>`, `<list[str]>`), every subcommand a one-line summary that
fits the command list, `--method` its choices, and every `-h` an example that runs. No torch
import: `-h` stays fast (the method names are spelled here; tests/integration/test_cli_habits.py
checks them against `d3llm.decode.METHODS`).
"""

from __future__ import annotations

METHOD_CHOICES = ("vanilla", "fast-dllm", "fast-dllm-dual", "dparallel", "d3llm", "d3llm-cache", "ar", "ar-spec",
                  "block", "fast-dllm-v2", "d3llm-block", "d3llm-exact")

# Option name -> what to type; anything not listed shows its own name in capitals.
METAVARS = {
    "set": "NAME=VALUE", "train-set": "NAME=VALUE", "storage-dtype": "DTYPE", "param": "NAME=V1,V2,...", "task": "TASK", "model": "MODEL", "teacher": "MODEL",
    "out": "DIR", "config": "FILE.yaml", "json": "FILE", "log_samples": "FILE.jsonl", "trajectories": "DIR",
    "device": "DEVICE", "dtype": "DTYPE", "method": "METHOD", "layout": "LAYOUT", "split": "SPLIT",
}

SUMMARIES = {
    "generate": "Answer a prompt with a model.",
    "chat": "Talk to a model in the terminal.",
    "serve": "Serve a model over an OpenAI-compatible HTTP API.",
    "eval": "Score a model on tasks: accuracy, TPF, tokens/s.",
    "sweep": "Evaluate a method over a grid of settings.",
    "leaderboard": "Compare result files: accuracy, TPF, AUP, plots.",
    "aup": "AUP of a table of (TPF, accuracy) points.",
    "tune": "Choose a model's decode recipe on validation problems.",
    "demo": "Every bundled model on every task, in one table.",
    "models": "List the bundled models.",
    "train": "Train a model from a YAML recipe.",
    "trajectories": "Record a teacher's unmasking order (rollouts).",
    "distill": "Distil a d3LLM student from trajectories.",
    "export": "Write a model in another layout or precision.",
}

EXAMPLES = {
    "generate": ["d3llm generate -m tiny-d3llm 'Omar has 88 books. Omar sells 27 books. Omar sells 14 books. "
                 "How many books does Omar have now?'",
                 "echo 'Write a Python function `copies(s)` that returns the string s repeated 3 times.' "
                 "| d3llm generate -m tiny-d3llm --threshold 0.8 --stats -"],
    "chat": ["d3llm chat tiny-d3llm"],
    "serve": ["d3llm serve tiny-d3llm --port 8000",
              "d3llm serve /ckpt/LLaDA-8B-Instruct --method d3llm-cache --device cuda"],
    "eval": ["d3llm eval -m tiny-d3llm --task arith --task code --n 20",
             "d3llm eval -m tiny-teacher --task arith --method vanilla --n 200 --json runs/teacher-arith.json"],
    "sweep": ["d3llm sweep -m tiny-d3llm --task arith --param threshold=0.3,0.5,0.8 --n 50 --out runs/sweep"],
    "leaderboard": ["d3llm leaderboard runs/sweep results/current/tiny-ar-arith-ar.json --allow-mixed "
                    "--out runs/board"],
    "aup": ["d3llm aup table.yaml   # table.yaml: arith: {d3llm: [[1.0, 80], [4.0, 78]]}"],
    "demo": ["d3llm demo --n 10 --out runs/demo", "d3llm demo --task arith --method d3llm --n 5"],
    "models": ["d3llm models", "d3llm models --json"],
    "tune": ["d3llm tune tiny-d3llm --n 100", "d3llm tune runs/my-d3llm --task arith --save"],
    "train": ["d3llm train --config configs/tiny-block-v2.yaml --out runs/tiny-block-v2 --stop-at 100"],
    "trajectories": ["d3llm trajectories --teacher tiny-teacher --task arith=600 --task code=300 --out runs/traj"],
    "distill": ["d3llm distill --teacher tiny-teacher --trajectories runs/traj --config configs/tiny-d3llm.yaml "
                "--out runs/my-d3llm",
                "d3llm distill -m tiny-teacher --trajectories runs/traj --config configs/tiny-d3llm.yaml "
                "--train-set steps=100 --out runs/short-d3llm"],
    "export": ["d3llm export tiny-teacher --out runs/teacher-llada --layout llada",
               "d3llm export tiny-ar --out runs/tiny-ar-fp16 --storage-dtype float16"],
}


def _metavar(param) -> str:
    long = max(getattr(param, "opts", None) or [param.name], key=len).lstrip("-")
    if long in METAVARS:
        return METAVARS[long]
    descriptor = getattr(param, "type_descriptor", None)
    kind = getattr(descriptor, "annotation", None)
    return {int: "N", float: "X"}.get(kind, long.upper().replace("-", "_"))


def tidy(group) -> None:
    """Rewrite the help of `group` (the click group of `d3llm`) and of its subcommands in place."""
    for name, command in group.commands.items():
        command.short_help = SUMMARIES.get(name, command.short_help)
        if name in EXAMPLES:
            # "\b" keeps click from re-wrapping the examples into one paragraph.
            command.epilog = "\b\nExamples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        for param in command.params:
            if param.param_type_name == "argument":
                param.metavar = _metavar(param)
                # typer prints an argument as `{NAME}` and `NAME <str>`; plain NAME reads better
                param.display_type_rich = lambda ctx: None
                param._usage_display_name = (lambda shown: lambda: shown)(
                    ("{}" if param.required else "[{}]").format(param.metavar) + ("..." if param.nargs != 1 else ""))
            elif not getattr(param, "is_flag", False) and param.name != "help":
                param.metavar = _metavar(param)
            if param.name == "method" and param.help and "One of:" not in param.help:
                param.help += " One of: " + ", ".join(METHOD_CHOICES) + "."
