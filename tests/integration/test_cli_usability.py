"""The `d3llm` command's help, version, model listing, and sweeps that refuse stale folders."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import typer.main

from d3llm.cli import app
from tests.conftest import run_cli, save_toy_model

COMMANDS = sorted(typer.main.get_command(app).commands)


@pytest.fixture(scope="module")
def toys(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("usability")
    return (save_toy_model(root / "toy-a", tiny_tokenizer, seed=0),
            save_toy_model(root / "toy-b", tiny_tokenizer, seed=1))


def one_line_error(code, err, pattern):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


# --- help and version ---------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_flags_on_the_main_command_and_every_subcommand(monkeypatch, capsys, flag):
    code, out, _ = run_cli(monkeypatch, capsys, flag)
    assert code in (0, None) and "Usage: d3llm" in out and "--version" in out and "-h, --help" in out
    for command in COMMANDS:
        code, out, err = run_cli(monkeypatch, capsys, command, flag)
        assert code in (0, None), (command, err)
        assert f"Usage: d3llm {command}" in out
        assert "<bool>" not in out, (command, out)  # flags take no value


def test_version(monkeypatch, capsys):
    from d3llm import __version__

    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert code in (0, None)
    assert out.startswith(f"d3llm {__version__}") and len(out.strip().splitlines()) == 1


def test_help_shows_brackets_and_plain_flags(monkeypatch, capsys):
    _, out, _ = run_cli(monkeypatch, capsys, "aup", "--help")
    assert "[[tpf, accuracy_pct], ...]" in out
    _, out, _ = run_cli(monkeypatch, capsys, "generate", "-h")
    assert any(line.split() == ["--stream", "Print", "text", "as", "soon", "as", "it", "is", "final."]
               for line in out.splitlines()), out
    _, out, _ = run_cli(monkeypatch, capsys, "leaderboard", "-h")
    assert "--plots / --no-plots" in out


def test_a_flag_given_a_value_is_refused(monkeypatch, capsys, toys):
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", toys[0], "--stream", "true", "hi")
    assert code == 2 and "unexpected extra argument" in err


@pytest.mark.parametrize("command", ["generate", "eval", "sweep", "serve", "chat"])
def test_model_is_required_everywhere(monkeypatch, capsys, command):
    _, out, _ = run_cli(monkeypatch, capsys, command, "-h")
    model_line = next(line for line in out.splitlines() if "--model" in line)
    assert "[default:" not in model_line
    extra = {"generate": ["hi"], "eval": ["--task", "arith"], "sweep": ["--task", "arith", "--param", "seed=0",
                                                                         "--out", "x"]}.get(command, [])
    code, _, err = run_cli(monkeypatch, capsys, command, *extra)
    missing = "Missing MODEL" if command in ("serve", "chat") else "Missing option '--model'"  # MODEL or --model
    assert code == 2 and missing in err and len(err.strip().splitlines()) == 1


def test_one_max_new_tokens_default_the_presets(monkeypatch, capsys, toys):
    from d3llm.cli.common import decode_config
    from d3llm.decode.config import DecodeConfig

    for command in ("generate", "eval", "sweep", "chat"):
        _, out, _ = run_cli(monkeypatch, capsys, command, "-h")
        assert "[default: the preset's max_new_tokens, 64]" in " ".join(out.split()), command
    assert decode_config(None, "llada", None, []).max_new_tokens == DecodeConfig.max_new_tokens == 64
    assert decode_config("vanilla", "llada", 8, ["max_new_tokens=6"]).max_new_tokens == 6  # --set wins


# --- d3llm models -------------------------------------------------------------------------


def test_models_lists_family_parameters_method_and_accuracy(monkeypatch, capsys):
    from d3llm.models import bundled_models
    from d3llm.models.recipe import read_recipe

    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code in (0, None)
    table, _, recipes = out.strip().partition("\n\n")
    lines = table.splitlines()
    assert lines[0].split()[:8] == ["model", "family", "params", "method", "blocks", "arith", "arith-long", "code"]
    assert max(map(len, out.splitlines())) <= 100, out  # fits a terminal (paths: --json)
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert set(by_name) == set(bundled_models())

    def method(name):  # the method column: its decode recipe's, else its family's default
        recipe = read_recipe(bundled_models()[name])
        return recipe.method if recipe else {"tiny-teacher": "d3llm", "tiny-block": "d3llm-block"}[name]

    assert by_name["tiny-ar"].split()[1:4] == ["ar", "2.85M", "ar"]
    assert by_name["tiny-teacher"].split()[1:5] == ["llada", "2.85M", method("tiny-teacher"), "8"]  # its stored blocks
    assert by_name["tiny-block"].split()[1:5] == ["block", "2.85M", method("tiny-block"), "8"]  # its trained blocks
    assert by_name["tiny-dparallel"].split()[4] == "32" and by_name["tiny-ar"].split()[4] == "-"
    assert by_name["tiny-ar"].split()[5:] == ["90.6", "87.5", "84.4", "ar,", "n=32"]  # provenance.json: final validation
    code, out, _ = run_cli(monkeypatch, capsys, "models", "--json")
    listing = {m["name"]: m for m in json.loads(out)}
    assert listing["tiny-block"]["family"] == "block" and listing["tiny-block"]["parameters"] == 2853312
    assert listing["tiny-block"]["default_method"] == "d3llm-block"
    assert listing["tiny-d3llm"]["validation_method"] == "d3llm"
    recipe = read_recipe(bundled_models()["tiny-d3llm"])  # its decode recipe: the method column, and listed
    head, *own = recipe.text().split("; ")  # a task's own settings on a line of their own
    assert by_name["tiny-d3llm"].split()[3] == recipe.method and f"tiny-d3llm: {head}" in recipes
    assert all(f"    on {task_settings}" in recipes for task_settings in own)
    assert listing["tiny-d3llm"]["recipe"].startswith(recipe.text())


def test_models_does_not_import_torch():
    """`d3llm models` reads the records only: no torch or transformers import (seconds)."""
    script = ("import sys\nfrom d3llm.cli import app\n"
              "try:\n    app(['models'])\nexcept SystemExit:\n    pass\n"
              "print('heavy:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "tiny-teacher" in done.stdout and "heavy: []" in done.stdout


# --- sweeps resume only what matches ---------------------------------------------------------


def sweep_args(model, out, *extra, n=2, grid="threshold=0.5"):
    return ["sweep", "--model", model, "--task", "arith", "--method", "d3llm", "--n", n, "--max-new-tokens", 8,
            "--set", "block_size=4", "--param", grid, "--out", out, *extra]


def test_sweep_refuses_a_folder_of_other_settings(monkeypatch, capsys, toys, tmp_path):
    out = tmp_path / "sweep"
    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[0], out))
    assert code in (0, None), err
    before = {f.name: f.read_text() for f in out.iterdir()}
    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[0], out))  # same settings: resumed
    assert code in (0, None) and "point " not in err

    changes = {
        "model": sweep_args(toys[1], out),
        "n 2 there, 3 now": sweep_args(toys[0], out, n=3),
        "seed 0 there, 1 now": sweep_args(toys[0], out, "--seed", 1),
        "split 'test' there, 'validation' now": sweep_args(toys[0], out, "--split", "validation"),
        "method 'd3llm' there, 'dparallel' now": [a if a != "d3llm" else "dparallel" for a in sweep_args(toys[0], out)],
        "fixed": sweep_args(toys[0], out, "--set", "cache=delayed"),
        "grid": sweep_args(toys[0], out, grid="threshold=0.5,0.7"),
        "dtype 'float32' there, 'bfloat16' now": sweep_args(toys[0], out, "--dtype", "bfloat16"),
    }
    for what, args in changes.items():
        code, _, err = run_cli(monkeypatch, capsys, *args)
        one_line_error(code, err, f"--out {out} holds a sweep with other settings")
        assert what in err and "use --overwrite" in err, (what, err)
    code, _, err = run_cli(monkeypatch, capsys, *[a if a != "arith" else "code" for a in sweep_args(toys[0], out)])
    one_line_error(code, err, "task 'arith' there, 'code' now")
    assert {f.name: f.read_text() for f in out.iterdir()} == before  # nothing was touched

    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[1], out, "--overwrite", n=3,
                                                            grid="threshold=0.5,0.7"))
    assert code in (0, None), err
    curve = json.loads((out / "curve.json").read_text())
    assert curve["n"] == 3 and curve["sweep_settings"]["model"] == str(toys[1]) and len(curve["points"]) == 2
    points = [json.loads(f.read_text()) for f in sorted(out.glob("point-*.json"))]
    assert len(points) == 2 and all(p["n"] == 3 and p["model"] == str(toys[1]) for p in points)


def test_sweep_refuses_points_without_recorded_settings(monkeypatch, capsys, toys, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "point-000.json").write_text(json.dumps({"sweep_point": {"threshold": "0.5"}, "n": 100}))
    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[0], out))
    one_line_error(code, err, "settings not recorded (written by an older d3llm)")
    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[0], out, "--overwrite"))
    assert code in (0, None), err
    assert json.loads((out / "point-000.json").read_text())["n"] == 2


def test_sweep_refuses_a_setting_both_swept_and_fixed(monkeypatch, capsys, toys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[0], tmp_path / "s", grid="block_size=4,8"))
    one_line_error(code, err, "block_size is both swept (--param) and fixed (--set)")


def test_sweep_overwrite_recomputes_points_of_the_same_settings(monkeypatch, capsys, toys, tmp_path):
    """--overwrite replaces the points even when the settings match (a rerun after a decoder
    change must not read the old points back); without it they are resumed as they are."""
    out = tmp_path / "sweep"
    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[0], out))
    assert code in (0, None), err
    point = out / "point-000.json"
    record = json.loads(point.read_text())
    point.write_text(json.dumps({**record, "marker": "old"}))
    run_cli(monkeypatch, capsys, *sweep_args(toys[0], out))
    assert json.loads(point.read_text())["marker"] == "old"  # resumed
    code, _, err = run_cli(monkeypatch, capsys, *sweep_args(toys[0], out, "--overwrite"))
    assert code in (0, None), err
    assert "marker" not in json.loads(point.read_text())
