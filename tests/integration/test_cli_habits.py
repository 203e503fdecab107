"""The `d3llm` command's habits: help that says what to type, with an example and
the method choices; first-class decode options and `-` for stdin; one task per sweep; a recipe
that needs another's output says which; MODEL positional for serve and chat; chat that keeps
going after Ctrl-C and answers single-turn models one message at a time; output that fits."""

from __future__ import annotations

import io
import re
import sys

import pytest
import typer.main

from d3llm.cli import app
from d3llm.cli.help import METHOD_CHOICES, SUMMARIES, tidy
from tests.conftest import run_cli

QUESTION = "Omar has 88 books. Omar sells 27 books. Omar sells 14 books. How many books does Omar have now?"


def one_line_error(code, err, *parts):
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


# --- help ---------------------------------------------------------------------------------


def test_help_names_what_to_type_and_shows_an_example(monkeypatch, capsys):
    for command in sorted(typer.main.get_command(app).commands):
        code, out, _ = run_cli(monkeypatch, capsys, command, "-h")
        assert code in (0, None)
        assert not re.search(r"<(str|int|float|path|list\[.*?\])>", out), (command, out)  # no Python types
        assert re.search(r"Examples:\n +d3llm ", out), (command, out)
    _, out, _ = run_cli(monkeypatch, capsys, "generate", "-h")
    assert "--set NAME=VALUE" in out and "--model MODEL" in out and "--max-new-tokens N" in out
    assert "Usage: d3llm generate [OPTIONS] PROMPT" in out


def test_method_help_lists_the_methods_there_are():
    from d3llm.decode import METHODS

    assert METHOD_CHOICES == METHODS  # spelled in cli/help.py (no torch for -h); must not drift
    command = typer.main.get_command(app)
    tidy(command)
    method = next(p for p in command.commands["eval"].params if p.name == "method")
    assert all(m in method.help for m in METHODS)


def test_the_command_list_is_not_cut(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    _, out, _ = run_cli(monkeypatch, capsys, "--help")
    listed = out.split("Commands:")[1]
    for name, summary in SUMMARIES.items():
        assert re.search(rf"^  {name}\s+{re.escape(summary)}$", listed, flags=re.M), (name, listed)
    assert "..." not in listed


# --- generate -----------------------------------------------------------------------------


def test_decode_options_are_first_class_and_set_wins(monkeypatch, capsys):
    from d3llm.cli.common import decode_config

    config = decode_config(None, "llada", None, [], temperature=0.7, threshold=0.8, block_size=16)
    assert (config.temperature, config.strategy.threshold, config.block_size) == (0.7, 0.8, 16)
    assert decode_config(None, "llada", None, ["threshold=0.3"], threshold=0.8).strategy.threshold == 0.3
    code, out, err = run_cli(monkeypatch, capsys, "generate", "-m", "tiny-d3llm", "--threshold", "0.3",
                             "--block-size", "16", "--stats", QUESTION)
    assert code in (0, None) and out.strip().endswith("#### 47"), (out, err)
    code, _, err = run_cli(monkeypatch, capsys, "generate", "-m", "tiny-ar", "--threshold", "0.3", QUESTION)
    one_line_error(code, err, "threshold")  # `ar` has no threshold: an error, not ignored


def test_eval_and_chat_take_the_same_first_class_options(monkeypatch, capsys, tmp_path):
    import json

    args = ["eval", "-m", "tiny-d3llm", "--task", "arith", "--n", "4"]
    run_cli(monkeypatch, capsys, *args, "--threshold", "0.3", "--block-size", "8", "--json", tmp_path / "a.json")
    run_cli(monkeypatch, capsys, *args, "--set", "threshold=0.3", "--set", "block_size=8", "--json", tmp_path / "b.json")
    first, second = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert first["decode_config"] == second["decode_config"] and first["decode_config"]["threshold"] == 0.3
    assert first["accuracy_pct"] == second["accuracy_pct"] and first["nfe"] == second["nfe"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION + "\n"))
    code, out, err = run_cli(monkeypatch, capsys, "chat", "tiny-d3llm", "--threshold", "0.3", "--block-size", "8")
    assert code in (0, None) and out.strip().endswith("#### 47"), (out, err)


def test_dash_reads_the_prompt_from_stdin_and_stats_follow_a_newline(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION + "\n"))
    code, out, err = run_cli(monkeypatch, capsys, "generate", "-m", "tiny-d3llm", "--stream", "--stats", "-")
    assert code in (0, None), err
    assert out.endswith("#### 47\n")  # the streamed answer ends its line before the stats (stderr)
    assert re.match(r"\[[a-z0-9-]+\] tokens=", err), err  # [the method the model decoded with]
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    code, _, err = run_cli(monkeypatch, capsys, "generate", "-m", "tiny-d3llm", "-")
    one_line_error(code, err, "the prompt is empty (standard input held no text)")


# --- sweep, train -------------------------------------------------------------------------


def test_a_sweep_of_two_tasks_is_refused_not_cut_to_one(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "sweep", "-m", "tiny-d3llm", "--task", "arith", "--task", "code",
                           "--param", "threshold=0.3", "--out", tmp_path / "s")
    one_line_error(code, err, "--task given 2 times (arith, code)", "one sweep per task")
    assert not (tmp_path / "s").exists()


def test_a_recipe_that_needs_another_names_init_from_and_the_chain(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", "configs/tiny-teacher-stage5.yaml",
                           "--out", tmp_path / "t")
    one_line_error(code, err, "`init_from: runs/tiny-teacher-stage3`",
                   "`d3llm train --config configs/tiny-teacher-from-block.yaml --out runs/tiny-teacher-from-block` && "
                   "`d3llm train --config configs/tiny-teacher-stage2.yaml --out runs/tiny-teacher-stage2` && "
                   "`d3llm train --config configs/tiny-teacher-stage3.yaml --out runs/tiny-teacher-stage3`")
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", "configs/tiny-teacher.yaml",
                           "--out", tmp_path / "t")
    one_line_error(code, err, "`init_from: runs/tiny-ar`",
                   "a cycle: runs/tiny-teacher -> runs/tiny-ar -> runs/tiny-teacher")
    assert not (tmp_path / "t").exists()


# --- serve, chat --------------------------------------------------------------------------


def test_model_positional_or_option_not_both(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "serve", "tiny-ar", "--model", "tiny-d3llm")
    one_line_error(code, err, "MODEL given twice")
    code, _, err = run_cli(monkeypatch, capsys, "serve", "tiny-ar", "--port", "0")
    one_line_error(code, err, "--port must be in 1..65535")  # tiny-ar was taken as MODEL; the port checked next


def test_chat_answers_a_single_turn_model_one_message_at_a_time(monkeypatch, capsys):
    second = "Ivy has 52 eggs. A friend gives Ivy 2 eggs. Ivy loses 11 eggs. How many eggs does Ivy have now?"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{QUESTION}\n{second}\n"))
    code, out, err = run_cli(monkeypatch, capsys, "chat", "tiny-d3llm")
    assert code in (0, None), err
    assert re.findall(r"#### \d+", out) == ["#### 47", "#### 43"]  # the second is not confused by the first


def test_ctrl_c_cancels_the_answer_and_keeps_the_chat(lm):
    from d3llm.serve.chat import ChatSession, repl

    lines = iter(["first", "second"])

    def read(_prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    class Interrupting(io.StringIO):  # Ctrl-C arrives while the first answer is being written
        def write(self, text):
            if not self.getvalue() and text.strip():
                super().write(text)
                raise KeyboardInterrupt
            return super().write(text)

    out, err = Interrupting(), io.StringIO()
    with ChatSession(lm, "vanilla", 8, history=True) as session:
        repl(session, read=read, out=out, err=err)
        assert "answer cancelled" in err.getvalue()
        assert err.getvalue().count("nfe=") == 1  # the second message was answered
        users = [m["content"] for m in session.history if m["role"] == "user"]
        assert users == ["second"]  # the cancelled answer's question is not kept


# --- output width ---------------------------------------------------------------------------


def test_demo_tables_never_cut_model_or_method_names():
    from rich.console import Console

    from d3llm.eval.leaderboard import Result, build_leaderboard
    from d3llm.eval.report import terminal_tables

    rows = [Result("tiny-block-d3llm", "arith", "fast-dllm-v2", 10, 0, "test", 90, 5.0, 900.0, source="a"),
            Result("tiny-teacher", "arith", "vanilla", 10, 0, "test", 80, 0.4, 90.0, source="b")]
    console = Console(width=80, record=True)
    for table in terminal_tables(build_leaderboard(rows), 10, 0):
        console.print(table)
    text = console.export_text()
    assert "tiny-block-d3llm" in text and "fast-dllm-v2" in text and "…" not in text
    assert "90.0 [59.6, 98.2]" in text and max(len(line) for line in text.splitlines()) <= 80
    assert text.count("arith") == 1  # the task is the table's title, not a column repeated per row


def test_chat_banner_says_whether_the_model_keeps_the_conversation(lm):
    from d3llm import load_model
    from d3llm.serve.chat import ChatSession, banner

    with ChatSession(load_model("tiny-d3llm")) as bundled, ChatSession(lm) as other:
        assert not bundled.multi_turn and "single-turn" in banner(bundled) and "--history" in banner(bundled)
        assert other.multi_turn and "multi-turn" in banner(other)
        assert "Ctrl-C cancels an answer" in banner(other)
