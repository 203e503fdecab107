"""No command replaces a user's file unless it is the command's own earlier output or
--overwrite is given; a killed export's hidden folders are recovered on rerun.
The refusals themselves are cases of test_bad_inputs_hostile.py (`user-files-*`); these tests
show the other side: a command's own output is replaced without --overwrite, a user's with it."""

from __future__ import annotations

import json
import shutil

from d3llm.models import load_model
from tests.conftest import run_cli
from tests.integration.test_bad_inputs import RECORD
from tests.integration.test_no_data_loss import leftovers

EVAL = ("eval", "--model", "tiny-ar", "--task", "arith", "--n", "1", "--max-new-tokens", "8")


def test_eval_replaces_its_own_files_and_a_users_only_with_overwrite(monkeypatch, capsys, tmp_path):
    result, samples = tmp_path / "r.json", tmp_path / "s.jsonl"
    code, _, err = run_cli(monkeypatch, capsys, *EVAL, "--json", result, "--log-samples", samples)
    assert code == 0, err
    first = json.loads(result.read_text())
    code, _, err = run_cli(monkeypatch, capsys, *EVAL, "--json", result, "--log-samples", samples, "--seed", "1")
    assert code == 0, err  # its own earlier output: replaced
    assert json.loads(result.read_text())["seed"] == 1 and first["seed"] == 0
    result.write_text("my notes")
    code, _, err = run_cli(monkeypatch, capsys, *EVAL, "--json", result)
    assert code == 2 and "--overwrite" in err and result.read_text() == "my notes"
    code, _, err = run_cli(monkeypatch, capsys, *EVAL, "--json", result, "--overwrite")
    assert code == 0, err
    assert json.loads(result.read_text())["task"] == "arith"


def test_leaderboard_replaces_its_own_board(monkeypatch, capsys, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(RECORD))
    board = ("leaderboard", tmp_path / "r.json", "--no-plots", "--out", tmp_path / "board")
    assert run_cli(monkeypatch, capsys, *board)[0] == 0
    (tmp_path / "board" / "notes.txt").write_text("mine")  # beside the board: no clash
    code, _, err = run_cli(monkeypatch, capsys, *board)
    assert code == 0, err
    assert (tmp_path / "board" / "notes.txt").read_text() == "mine"
    (tmp_path / "board" / "leaderboard.json").write_text('{"mine": 1}')  # now the board is not ours
    code, _, err = run_cli(monkeypatch, capsys, *board)
    assert code == 2 and "--overwrite" in err
    assert run_cli(monkeypatch, capsys, *board, "--overwrite")[0] == 0


def test_a_killed_export_is_recovered_on_rerun(monkeypatch, capsys, tmp_path):
    out = tmp_path / "export"
    assert run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out)[0] == 0
    # What a kill while moving the new export in leaves: a file moved aside, a half-written staging folder.
    aside = tmp_path / ".export.old-k1ll3d"
    aside.mkdir()
    shutil.move(str(out / "model.safetensors"), aside / "model.safetensors")
    staging = tmp_path / ".export.tmp-k1ll3d"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"half")
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out)
    assert code == 0, err
    assert leftovers(tmp_path) == []
    assert load_model(out).facts.family == "ar"
