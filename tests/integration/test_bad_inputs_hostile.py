"""Hostile inputs, every class a table: huge numbers, outputs that cannot be
written (devices, /proc, symlink loops), outputs that are a user's files, input files that
would hang or blow up (YAML alias bombs, FIFOs, deep JSON, 5001-digit ints, a safetensors
header of 2**62 bytes, a config claiming 100000 layers), AUP tables of the wrong types, and
prompts that are not text.

Each case runs `d3llm ARGS` in-process (the runner of test_bad_inputs.py: a 30 s alarm turns
a hang into a failure) and must end with exit code 2 and one line on stderr naming the
argument or file, no traceback, and no file that existed before changed or removed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.integration.test_bad_inputs import (  # noqa: F401 (toy_folder: a fixture used by name)
    HUGE, NOT_UTF8, RECORD, TINY_TRAIN, Model, _build_model, _write, free_port, run, snapshot, toy_folder,
)

FIFO = object()  # a named pipe: opening it for reading blocks until a writer comes
LOOP = object()  # a symbolic link to itself


@dataclass(frozen=True)
class Link:
    target: str  # "{tmp}" is the case's folder


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    expect: str  # the error line names one of these ("|"-separated)
    files: tuple[tuple[str, object], ...] = ()
    model: Model | None = None


CASES: list = []


def case(id_: str, *argv: str, expect: str, files: dict | None = None, model: Model | None = None) -> None:
    CASES.append(pytest.param(Case(tuple(argv), expect, tuple((files or {}).items()), model), id=id_))


GOOD_TRAIN = {"c.yaml": yaml.safe_dump(TINY_TRAIN)}
MANIFEST_TRAJ = {"traj/manifest.json": {"format": "d3llm-trajectories", "version": 1}}

# --- huge numbers: refused before any work or allocation -----------------------------------

TEACHER_GEN = ("generate", "--model", "tiny-teacher", "--max-new-tokens", "8", "hi")
EVAL = ("eval", "--model", "tiny-ar", "--task", "arith", "--n", "1", "--max-new-tokens", "8")
for name, argv, expect in [
    ("eval--n", ("eval", "--model", "tiny-ar", "--task", "arith", "--n", HUGE), "--n"),
    ("eval--n-two-tasks", ("eval", "--model", "tiny-ar", "--task", "arith", "--task", "code", "--n", HUGE), "--n"),
    ("demo--n", ("demo", "--out", "{tmp}/demo", "--task", "arith", "--n", HUGE), "--n"),
    ("sweep--n", ("sweep", "--model", "tiny-ar", "--task", "arith", "--method", "ar", "--param",
                  "max_new_tokens=8", "--out", "{tmp}/sweep", "--n", HUGE), "--n"),
    ("trajectories--task-arith", ("trajectories", "--teacher", "tiny-teacher", "--task", f"arith={HUGE}",
                                  "--out", "{tmp}/traj"), "arith"),
    ("trajectories--task-arith-1e20", ("trajectories", "--teacher", "tiny-teacher", "--task", "arith=1e20",
                                       "--out", "{tmp}/traj"), "arith"),
    ("trajectories--task-code", ("trajectories", "--teacher", "tiny-teacher", "--task", f"code={HUGE}",
                                 "--out", "{tmp}/traj"), "code"),
    ("trajectories--chunk-size", ("trajectories", "--teacher", "tiny-teacher", "--task", "arith=2", "--out",
                                  "{tmp}/traj", "--max-new-tokens", HUGE), "max_new_tokens|max-new-tokens"),
    ("export--decode-block-size", ("export", "tiny-teacher", "--out", "{tmp}/export", "--decode-block-size", HUGE),
     "--decode-block-size"),
    ("sweep--param-block-size", ("sweep", "--model", "tiny-teacher", "--task", "arith", "--param",
                                 f"block_size=8,{HUGE}", "--out", "{tmp}/sweep", "--n", "1"), "block_size"),
    ("sweep--param-threshold-huge", ("sweep", "--model", "tiny-teacher", "--task", "arith", "--param",
                                     f"threshold={HUGE}", "--out", "{tmp}/sweep", "--n", "1"), "threshold"),
]:
    case(f"huge-{name}", *argv, expect=expect)
for setting in ("block_size", "max_new_tokens", "tokens_per_step"):
    for value in (HUGE, str(2**20 + 1), str(2**63)):
        case(f"huge-generate--set-{setting}={value[:6]}", *TEACHER_GEN, "--set", f"{setting}={value}", expect=setting)
for setting in ("cache_delay", "refresh_interval"):
    for value in (HUGE, str(2**63)):
        case(f"huge-generate-d3llm-cache--set-{setting}={value[:6]}", *TEACHER_GEN, "--method", "d3llm-cache",
             "--set", f"{setting}={value}", expect=setting)
for command in (TEACHER_GEN, EVAL, ("chat", "--model", "tiny-ar")):
    for value in ("1e-320", "1e-4", "5e-324"):
        case(f"tiny-temperature-{command[0]}={value}", *command, "--set", f"temperature={value}", expect="temperature")
for key in ("steps", "num_examples", "batch_size", "vocab_size", "gen_length", "save_every", "eval_n"):
    case(f"huge-train-yaml-{key}", "train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/run", expect=key,
         files={"c.yaml": yaml.safe_dump({**TINY_TRAIN, key: int(HUGE)})})
for key, value in (("hidden_size", 2**20), ("num_layers", 100000), ("intermediate_size", 2**30),
                   ("max_length", 2**40), ("num_heads", 2**20)):
    case(f"huge-train-yaml-model-{key}", "train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/run", expect=key,
         files={"c.yaml": yaml.safe_dump({**TINY_TRAIN, "model": {**TINY_TRAIN["model"], key: value}})})
case("huge-train--steps", "train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/run", "--steps", HUGE,
     expect="steps", files=GOOD_TRAIN)

# --- outputs that cannot be written: found before any work --------------------------------

FILE_OUTPUTS = {
    "eval--json": (*EVAL, "--json"),
    "eval--log-samples": (*EVAL, "--log-samples"),
}
FOLDER_OUTPUTS = {
    "train--out": ("train", "--config", "{tmp}/c.yaml", "--out"),
    "distill--out": ("distill", "--teacher", "tiny-teacher", "--trajectories", "{tmp}/traj", "--out"),
    "trajectories--out": ("trajectories", "--teacher", "tiny-teacher", "--task", "arith=2", "--out"),
    "sweep--out": ("sweep", "--model", "tiny-ar", "--task", "arith", "--method", "ar", "--param",
                   "max_new_tokens=8", "--n", "1", "--out"),
    "demo--out": ("demo", "--task", "arith", "--n", "1", "--out"),
    "leaderboard--out": ("leaderboard", "{tmp}/r.json", "--no-plots", "--out"),
    "export--out": ("export", "tiny-ar", "--out"),
}
INPUTS = {**GOOD_TRAIN, **MANIFEST_TRAJ, "r.json": RECORD}
PLACES = {  # where: (path, extra files)
    "proc": ("/proc/d3llm-test/x", {}),
    "sys": ("/sys/d3llm-test", {}),
    "symlink-loop": ("{tmp}/loop/x", {"loop": LOOP}),
    "dangling-symlink": ("{tmp}/dangling", {"dangling": Link("{tmp}/nowhere/deeper")}),
    "under-a-file": ("{tmp}/taken/x", {"taken": "mine"}),
}
for name, argv in FILE_OUTPUTS.items():
    for where, (path, extra) in {**PLACES, "dev-full": ("/dev/full", {}), "dev-null": ("/dev/null", {}),
                                 "a-fifo": ("{tmp}/out.json", {"out.json": FIFO})}.items():
        case(f"unwritable-{name}-{where}", *argv, path, expect=argv[-1], files={**INPUTS, **extra})
for name, argv in FOLDER_OUTPUTS.items():
    for where, (path, extra) in {**PLACES, "dev-full": ("/dev/full", {})}.items():
        case(f"unwritable-{name}-{where}", *argv, path, expect="--out", files={**INPUTS, **extra})

# --- a user's files are not replaced without --overwrite ----------------------------------

USER_MODEL = {"run/config.json": '{"mine": true}', "run/model.safetensors": b"my weights",
              "run/tokenizer.json": "{}", "run/notes.txt": "my notes"}
case("user-files-train--out", "train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/run", expect="--overwrite",
     files={**GOOD_TRAIN, **USER_MODEL})
case("user-files-train--out-only-notes", "train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/run",
     expect="--overwrite", files={**GOOD_TRAIN, "run/notes.txt": "mine"})
case("user-files-distill--out", "distill", "--teacher", "tiny-teacher", "--trajectories", "{tmp}/traj", "--out",
     "{tmp}/run", expect="--overwrite", files={**MANIFEST_TRAJ, **USER_MODEL})
for name, content in {"text": "my notes", "json-not-a-record": {"mine": 1}, "empty": ""}.items():
    case(f"user-files-eval--json-{name}", *EVAL, "--json", "{tmp}/r.json", expect="--overwrite",
         files={"r.json": content})
    case(f"user-files-eval--log-samples-{name}", *EVAL, "--log-samples", "{tmp}/s.jsonl", expect="--overwrite",
         files={"s.jsonl": content})
case("user-files-eval--json-per-task", "eval", "--model", "tiny-ar", "--task", "arith", "--task", "code", "--n", "1",
     "--json", "{tmp}/r.json", expect="--overwrite", files={"r-code.json": "mine"})
case("user-files-leaderboard--out", "leaderboard", "{tmp}/r.json", "--no-plots", "--out", "{tmp}/board",
     expect="--overwrite", files={"r.json": RECORD, "board/leaderboard.md": "# my board"})
case("user-files-leaderboard--out-json", "leaderboard", "{tmp}/r.json", "--no-plots", "--out", "{tmp}/board",
     expect="--overwrite", files={"r.json": RECORD, "board/leaderboard.json": {"mine": 1}})
case("user-files-trajectories--out", "trajectories", "--teacher", "tiny-teacher", "--task", "arith=2", "--out",
     "{tmp}/traj", expect="--overwrite", files={"traj/trajectories.parquet": b"my table"})
case("user-files-trajectories--out-foreign-manifest", "trajectories", "--teacher", "tiny-teacher", "--task",
     "arith=2", "--out", "{tmp}/traj", expect="--overwrite|manifest.json",
     files={"traj/manifest.json": {"format": "someone-else"}})

# --- input files that would hang or blow up -----------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8))
ONE_LINE_BOMB = "[&a [1,1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a], " + ", ".join(
    f"&{chr(99 + i)} [" + ",".join([f"*{chr(98 + i)}"] * 10) + "]" for i in range(7)) + "]"
DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP_YAML = "a: " + "[" * 100_000 + "]" * 100_000 + "\n"
LONG_INT = "7" * 5001
TRAIN = ("train", "--config", "{tmp}/c.yaml", "--out", "{tmp}/run")
DISTILL = ("distill", "--teacher", "tiny-teacher", "--trajectories", "{tmp}/traj", "--out", "{tmp}/student")
for name, content in {"alias-bomb": BOMB, "recursive-alias": "a: &a [*a]\n", "deep": DEEP_YAML,
                      "bomb-in-a-known-key": f"{yaml.safe_dump(TINY_TRAIN)}tasks_extra: *none\n"}.items():
    case(f"yaml-train--config-{name}", *TRAIN, expect="c.yaml", files={"c.yaml": content})
    case(f"yaml-aup-{name}", "aup", "{tmp}/t.yaml", expect="t.yaml", files={"t.yaml": content})
    case(f"yaml-distill--config-{name}", *DISTILL, "--config", "{tmp}/c.yaml", expect="c.yaml",
         files={"c.yaml": content, **MANIFEST_TRAJ})
case("yaml-trajectories--task-bomb", "trajectories", "--teacher", "tiny-teacher", "--task", f"arith={ONE_LINE_BOMB}",
     "--out", "{tmp}/traj", expect="--task")
case("yaml-distill--train-set-bomb", *DISTILL, "--train-set", f"windows={ONE_LINE_BOMB}", expect="--train-set|windows",
     files=MANIFEST_TRAJ)
case("yaml-distill--train-set-recursive", *DISTILL, "--train-set", "windows=&a [*a]", expect="--train-set|windows",
     files=MANIFEST_TRAJ)

BOARD = ("leaderboard", "{tmp}/results", "--no-plots", "--out", "{tmp}/board")
for name, (files, expect) in {
    "fifo-named-json-in-a-folder": ({"results/a.json": RECORD, "results/b.json": FIFO}, ""),
    "fifo-as-the-results-path": ({"results": FIFO}, "results"),
    "deep-json": ({"results/a.json": DEEP_JSON}, "a.json"),
    "5001-digit-n": ({"results/a.json": json.dumps(RECORD).replace('"n": 10', f'"n": {LONG_INT}')}, "a.json"),
    "5001-digit-accuracy": ({"results/a.json": json.dumps(RECORD).replace('"accuracy_pct": 50.0',
                                                                         f'"accuracy_pct": {LONG_INT}')}, "a.json"),
    "1e400-accuracy": ({"results/a.json": json.dumps(RECORD).replace('"accuracy_pct": 50.0',
                                                                    '"accuracy_pct": 1e400')}, "a.json"),
}.items():
    if not expect:  # the FIFO is skipped, and the good record alone makes a board: the user's board is not replaced
        case(f"file-leaderboard-{name}", *BOARD, expect="--overwrite", files={**files, "board/leaderboard.md": "mine"})
    else:
        case(f"file-leaderboard-{name}", *BOARD, expect=expect, files=files)
for name, content in {"fifo": FIFO, "deep": DEEP_JSON, "5001-digit-tpf": f'{{"arith": {{"m": [[{LONG_INT}, 50]]}}}}',
                      "a-folder": None}.items():
    files = {"t.json/x": "x"} if content is None else {"t.json": content}
    case(f"file-aup-{name}", "aup", "{tmp}/t.json", expect="t.json", files=files)
SWEEP_OUT = ("sweep", "--model", "tiny-ar", "--task", "arith", "--method", "ar", "--param", "max_new_tokens=8",
             "--n", "1", "--out", "{tmp}/sweep")
for name, content in {"deep": DEEP_JSON, "5001-digits": f'{{"sweep_settings": {LONG_INT}}}', "fifo": FIFO}.items():
    case(f"file-sweep-point-{name}", *SWEEP_OUT, expect="--out|--overwrite|point-000.json",
         files={"sweep/point-000.json": content, "sweep/curve.json": {"mine": 1}})
case("file-train--config-fifo", *TRAIN, expect="c.yaml", files={"c.yaml": FIFO})
case("file-distill--config-fifo", *DISTILL, "--config", "{tmp}/c.yaml", expect="c.yaml",
     files={"c.yaml": FIFO, **MANIFEST_TRAJ})
case("file-distill-manifest-fifo", *DISTILL, expect="manifest.json", files={"traj/manifest.json": FIFO})
case("file-distill-manifest-deep", *DISTILL, expect="manifest.json", files={"traj/manifest.json": DEEP_JSON})
case("file-distill-manifest-5001-digits", *DISTILL, expect="manifest.json",
     files={"traj/manifest.json": f'{{"format": "d3llm-trajectories", "version": 1, "num_records": {LONG_INT}}}'})
case("file-gsm8k-fifo", "eval", "--model", "tiny-ar", "--task", "gsm8k:{tmp}/g.jsonl", "--n", "1", expect="g.jsonl",
     files={"g.jsonl": FIFO})
case("file-gsm8k-deep-line", "eval", "--model", "tiny-ar", "--task", "gsm8k:{tmp}/g.jsonl", "--n", "1",
     expect="g.jsonl", files={"g.jsonl": DEEP_JSON + "\n"})

MODEL_GEN = ("generate", "--model", "{tmp}/model", "hi")
for name, (model, files, expect) in {
    "config-100000-layers": (Model({"num_hidden_layers": 100000}), {}, "config.json"),
    "config-hidden-1048576": (Model({"hidden_size": 1048576, "intermediate_size": 1048576}), {}, "config.json"),
    "config-deep-json": (Model(raw=DEEP_JSON), {}, "config.json"),
    "config-5001-digit-hidden": (Model(raw=f'{{"hidden_size": {LONG_INT}}}'), {}, "config.json"),
    "config-fifo": (Model(), {"model/config.json": FIFO}, "config.json|model"),
    "weights-header-2-62": (Model(), {"model/model.safetensors": (2**62).to_bytes(8, "little") + b"{}"},
                            "model.safetensors"),
    "weights-header-past-the-end": (Model(), {"model/model.safetensors": (64).to_bytes(8, "little") + b"{}"},
                                    "model.safetensors"),
    "weights-fifo": (Model(), {"model/model.safetensors": FIFO}, "model.safetensors|model"),
    "weights-empty": (Model(), {"model/model.safetensors": b""}, "model.safetensors"),
}.items():
    case(f"model-{name}", *MODEL_GEN, expect=expect, files=files, model=model)
for name, template in {"raises": "{{ raise_exception('boom') }}", "does-not-parse": "{% for m in messages %}",
                       "undefined-call": "{{ nosuch() }}"}.items():
    for command in (MODEL_GEN, ("eval", "--model", "{tmp}/model", "--task", "arith", "--n", "1"),
                    ("chat", "--model", "{tmp}/model")):
        case(f"model-chat-template-{name}-{command[0]}", *command, expect="chat template",
             files={"model/chat_template.jinja": template}, model=Model())
case("model-models-listing-header-2-62", "eval", "--model", "{tmp}/model", "--task", "arith", "--n", "1",
     expect="model.safetensors", files={"model/model.safetensors": (2**62).to_bytes(8, "little")}, model=Model())

# --- AUP tables of the wrong types --------------------------------------------------------

for name, content in {
    "bool-tpf": {"arith": {"m": [[True, 50]]}}, "bool-accuracy": {"arith": {"m": [[2, False]]}},
    "string-points": {"arith": {"m": [["2", "50"]]}}, "tpf-1e308": {"arith": {"m": [[1e308, 50]]}},
    "tpf-huge-int": {"arith": {"m": [[10 ** 400, 50]]}}, "point-a-mapping": {"arith": {"m": [{"a": 1, "b": 2}]}},
    "point-null": {"arith": {"m": [None]}}, "date-task": "2024-01-01:\n  m: [[1, 50]]\n",
    "int-method": "arith:\n  1: [[1, 50]]\n", "null-task": "~:\n  m: [[1, 50]]\n",
}.items():
    for json_flag in ((), ("--json",)):
        case(f"aup-types-{name}{'-json' if json_flag else ''}", "aup", "{tmp}/t.yaml", *json_flag,
             expect="t.yaml|arith", files={"t.yaml": content if isinstance(content, str) else yaml.safe_dump(content)})

# --- prompts that are not text ------------------------------------------------------------

INVALID_UTF8_ARG = NOT_UTF8.decode("utf-8", "surrogateescape")  # how Python hands such argv bytes over
case("prompt-generate-invalid-utf8", "generate", "--model", "tiny-ar", INVALID_UTF8_ARG, expect="prompt")
case("prompt-generate-lone-surrogate", "generate", "--model", "tiny-ar", "ab\udc80cd", expect="prompt")


def _make(path: Path, content: object, tmp: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is FIFO:
        if path.exists():
            path.unlink()
        os.mkfifo(path)
    elif content is LOOP:
        path.symlink_to(path)
    elif isinstance(content, Link):
        path.symlink_to(content.target.replace("{tmp}", str(tmp)))
    else:
        if path.exists() and not path.is_file():
            path.unlink()
        _write(path, content)


@pytest.mark.parametrize("bad", CASES)
def test_hostile_input_is_one_line_and_changes_nothing(bad: Case, tmp_path, toy_folder, monkeypatch, capsys):  # noqa: F811
    if bad.model is not None:
        _build_model(bad.model, tmp_path, toy_folder)
    for name, content in bad.files:
        _make(tmp_path / name, content, tmp_path)
    before = snapshot(tmp_path)
    port = free_port() if "{port}" in bad.argv else 0
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{port}", str(port)) for a in bad.argv]
    code, out, err = run(monkeypatch, capsys, argv)
    assert "Traceback" not in f"{code}{out}{err}", (code, err)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert any(part in lines[0] for part in bad.expect.split("|")), (bad.expect, err)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed before changed"
    assert set(before) <= set(after), "a file that existed before was removed"


def test_the_table_has_every_class():
    ids = [p.id for p in CASES]
    assert len(ids) >= 150 and len(set(ids)) == len(ids)
    for prefix in ("huge-", "tiny-temperature-", "unwritable-", "user-files-", "yaml-", "file-", "model-",
                   "aup-types-", "prompt-"):
        assert any(i.startswith(prefix) for i in ids), prefix


def test_a_real_process_refuses_an_invalid_utf8_prompt(tmp_path):
    """The bytes as a shell passes them, through a real argv."""
    import subprocess

    done = subprocess.run([sys.executable, "-m", "d3llm.cli", "generate", "--model", "tiny-ar", b"\xff\xfe bad \xc3\x28"],
                          capture_output=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(b"\n") == 1 and b"prompt" in done.stderr, done.stderr


def test_a_100_kb_prompt_is_one_line_without_a_library_warning():
    import subprocess

    done = subprocess.run([sys.executable, "-m", "d3llm.cli", "generate", "--model", "tiny-ar", "x" * 100_000],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "maximum length" in done.stderr, done.stderr


def test_chat_says_a_message_of_invalid_utf8_in_one_line_and_goes_on():
    import subprocess

    done = subprocess.run([sys.executable, "-m", "d3llm.cli", "chat", "--model", "tiny-ar"],
                          input=b"\xff\xfe bad\n", capture_output=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr and b"not valid UTF-8" in done.stderr, done.stderr


def test_a_chat_template_that_loops_is_one_line_after_a_time_limit(tmp_path, toy_folder):  # noqa: F811
    """10**10 iterations: refused when the model loads (the render runs in a thread with a time
    limit), in a real process, which ends with it."""
    import subprocess

    _build_model(Model(), tmp_path, toy_folder)
    (tmp_path / "model" / "chat_template.jinja").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    done = subprocess.run([sys.executable, "-m", "d3llm.cli", "generate", "--model", str(tmp_path / "model"), "hi"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "chat template did not finish" in done.stderr, done.stderr
