"""Every command of the README's quick start runs, and its answer is the one the README shows.

The quick start (README.md, from "## Quick start" to the next "## " heading) is read as its
fenced blocks. In a bash block, a command is followed by the output the README shows for it,
as `# ` lines; a `#` comment after a command is ignored. Each command is run here (in-process
through the `d3llm` entry point; `d3llm serve` as the same app on a free port, and curl's request
sent to it) and its output compared with the README's: text exactly, statistics except tokens/s
(machine-dependent). Python blocks are executed; a `# a / b / c` comment after a `print` is the
printed text with " / " for newlines. Commands not run here (installs, multi-GB downloads) are
listed in NOT_RUN with the reason: a new command in the quick start fails this test until it is
run here or listed.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli

README = Path(__file__).resolve().parents[2] / "README.md"
NOT_RUN = {
    "pip install": "installs the package (the tests run on the installed tree)",
    "d3llm-lm-eval run": "downloads GSM8K; the adapter runs on a local task in test_lm_eval_adapter.py",
    "lm_eval --model local-chat-completions": "downloads GSM8K; the route runs on a local task in "
                                              "test_lm_eval_adapter.py",
    "d3llm serve tiny-d3llm &": "the lm-eval route's server (the serve block above runs the same)",
}


def quick_start() -> list[tuple[str, str]]:
    text = README.read_text()
    section = text[text.index("## Quick start"):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)


def bash_steps(block: str) -> list[tuple[str, list[str]]]:
    """(command, the `# ` output lines the README shows after it)."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.replace("\\\n", " ").splitlines():
        if line.startswith("# ") or line == "#":
            steps[-1][1].append(line[2:])
        elif line.strip():
            steps.append((line.strip(), []))
    return steps


def words(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def stats_of(line: str) -> str:
    return re.sub(r"\s*tokens/s=\S+", "", line).strip()


def not_tokens_per_second(line: str) -> str:
    return re.sub(r", [0-9.]+ tokens/s$", "", line)


class Runner:
    def __init__(self, monkeypatch, capsys, tmp_path):
        self.monkeypatch, self.capsys, self.tmp_path = monkeypatch, capsys, tmp_path
        self.server_url: str | None = None
        self.stack = contextlib.ExitStack()
        self.ran: list[str] = []

    def cli(self, args: list[str], stdin: str | None = None):
        if stdin is not None:
            self.monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code, out, err = run_cli(self.monkeypatch, self.capsys, *args)
        assert code in (0, None), (args, err)
        return out, err

    def bash(self, command: str, shown: list[str]) -> None:
        if any(command.startswith(prefix) for prefix in NOT_RUN):
            return
        argv = words(command)
        if "|" in argv:  # echo 'TEXT' | d3llm ...
            bar = argv.index("|")
            assert argv[0] == "echo" and argv[bar + 1] == "d3llm", command
            out, _ = self.cli(argv[bar + 2:], stdin=" ".join(argv[1:bar]) + "\n")
            assert out.splitlines() == shown, (command, out)
        elif argv[:2] == ["d3llm", "serve"]:
            self.serve(argv[2])
        elif argv[0] == "curl":
            self.curl(argv, shown)
        elif argv[:2] == ["d3llm", "generate"]:
            out, err = self.cli(argv[1:])
            text = [line for line in shown if not line.startswith("[")]
            assert out.splitlines() == text, (command, out)
            for line in (line for line in shown if line.startswith("[")):  # --stats, on stderr
                assert stats_of(err.strip().splitlines()[-1]) == stats_of(line), (command, err)
        elif argv[:2] == ["d3llm", "eval"]:
            out, _ = self.cli(argv[1:])
            assert [not_tokens_per_second(x) for x in out.splitlines()] == [not_tokens_per_second(x) for x in shown]
        else:  # models, sweep, leaderboard: they run and say what the README says they do
            out, _ = self.cli(argv[1:])
            assert out.strip(), command
        self.ran.append(command)

    def serve(self, model: str) -> None:
        from d3llm import load_model
        from d3llm.serve import background_server, create_app

        self.server_url = self.stack.enter_context(background_server(create_app(load_model(model))))

    def curl(self, argv: list[str], shown: list[str]) -> None:
        url = next(a for a in argv if a.startswith("http://127.0.0.1:8000"))
        body = json.loads(argv[argv.index("-d") + 1])
        reply = httpx.post(url.replace("http://127.0.0.1:8000", self.server_url), json=body, timeout=60).json()
        content = reply["choices"][0]["message"]["content"]
        expected = re.search(r'"content": (".*?(?<!\\)")', shown[0]).group(1)
        assert content == json.loads(expected), (content, shown)
        self.ran.append("curl")

    def python(self, code: str) -> None:
        if self.server_url:
            code = code.replace("http://127.0.0.1:8000", self.server_url)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})
        shown = [m.replace(" / ", "\n") for m in re.findall(r"^print\(.*?\)\s+# (.*)$", code, flags=re.M)]
        for expected in shown[:1]:  # the first print shows the answer; later ones name their fields
            assert printed.getvalue().startswith(expected + "\n"), (printed.getvalue(), expected)
        self.ran.append("python")


def test_every_quick_start_command_runs_and_answers_as_shown(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)  # runs/ of the sweep and leaderboard go here
    runner = Runner(monkeypatch, capsys, tmp_path)
    blocks = quick_start()
    assert len(blocks) >= 8, "the quick start has lost its blocks"
    with runner.stack:
        for language, block in blocks:
            if language == "python":
                runner.python(block)
            else:
                for command, shown in bash_steps(block):
                    runner.bash(command, shown)
    kinds = {" ".join(words(c)[:2]) for c in runner.ran}
    assert {"d3llm models", "d3llm generate", "d3llm eval", "d3llm sweep", "d3llm leaderboard", "curl",
            "python"} <= kinds, kinds
    assert (tmp_path / "runs" / "board" / "leaderboard.md").is_file()


def test_commands_not_run_are_listed_with_a_reason():
    commands = [c for language, block in quick_start() if language != "python" for c, _ in bash_steps(block)]
    for prefix in NOT_RUN:
        assert any(c.startswith(prefix) for c in commands), f"NOT_RUN lists {prefix!r}, no longer in the README"


def test_readme_and_docs_links_lead_somewhere():
    """Every relative link in README.md and docs/ names a file or folder of the repository, and
    every `results/...` path they cite exists (results/ moved into current/ and archive/)."""
    root = README.parent
    missing = []
    for page in [README, *sorted((root / "docs").rglob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not target.startswith("http") and not (page.parent / target).exists():
                missing.append(f"{page.relative_to(root)}: {target}")
        for cited in re.findall(r"`(results/[^`*\s]+)`", text):
            if re.search(r"(^|[-/])(T|M|B|MODEL|TASK|METHOD|VARIANT)([-./]|$)|\.\.\.", cited):
                continue  # a pattern (results/current/tiny-MODEL-TASK-METHOD.json), not a path
            if not (root / cited.rstrip("/.,;")).exists():
                missing.append(f"{page.relative_to(root)}: {cited}")
    assert not missing, "\n".join(missing)


def test_the_readme_training_recipes_run_from_a_clone():
    """`d3llm train --config X` in the README starts from bundled models only (no runs/ folder
    that a fresh clone lacks): its sources pass the check `d3llm train` makes first."""
    from d3llm.train.config import TrainConfig
    from d3llm.train.recipes import check_sources

    configs = re.findall(r"^d3llm train --config (\S+)", README.read_text(), flags=re.M)
    assert configs, "the README shows no training command"
    for config in configs:
        path = README.parent / config
        check_sources(path, TrainConfig.from_yaml(path))
