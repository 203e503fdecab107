"""No command deletes or overwrites a user's data: `export` checks everything before
it touches `--out`, never removes files it did not write, and a failed `train` start leaves
nothing that blocks the corrected command."""

from pathlib import Path

import pytest
import yaml

from d3llm.errors import D3llmError
from d3llm.models import load_model
from d3llm.train.config import TrainConfig
from d3llm.train.trainer import train
from tests.conftest import run_cli


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under `folder`: a file's bytes, None for a folder."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def leftovers(parent: Path) -> list[str]:
    """Temporary or backup folders an export left beside its target."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def assert_one_line_error(code, err, pattern):
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


def user_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("my notes")
    (path / "config.json").write_text('{"mine": true}')  # a name export writes, but not an export
    (path / "data").mkdir()
    (path / "data" / "rows.jsonl").write_text('{"a": 1}\n')
    return path


def test_export_refuses_a_folder_holding_other_files(monkeypatch, capsys, tmp_path):
    out = user_folder(tmp_path / "mine")
    before = snapshot(out)
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out)
    assert_one_line_error(code, err, "--overwrite")
    assert snapshot(out) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_a_refused_export_leaves_the_target_untouched(monkeypatch, capsys, tmp_path, overwrite):
    mine = user_folder(tmp_path / "mine")
    previous = tmp_path / "previous"
    assert run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", previous)[0] in (0, None)
    for out in (mine, previous):
        before = snapshot(out)
        code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out, "--layout", "llada", *overwrite)
        assert_one_line_error(code, err, "LLaDA layout holds llada models")
        assert snapshot(out) == before
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_a_previous_export_and_keeps_other_files(monkeypatch, capsys, tmp_path):
    out = tmp_path / "export"
    assert run_cli(monkeypatch, capsys, "export", "tiny-teacher", "--out", out, "--shards", "2")[0] in (0, None)
    (out / "notes.txt").write_text("my notes")
    (out / "data").mkdir()
    (out / "data" / "rows.jsonl").write_text('{"a": 1}\n')
    before = snapshot(out)
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out)
    assert_one_line_error(code, err, "--overwrite")  # not only an export's files: refused
    assert snapshot(out) == before
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out, "--overwrite")
    assert code in (0, None), err
    assert (out / "notes.txt").read_text() == "my notes"
    assert (out / "data" / "rows.jsonl").read_text() == '{"a": 1}\n'
    assert not list(out.glob("model-*-of-*.safetensors")) and not (out / "model.safetensors.index.json").exists()
    assert load_model(out).facts.family == "ar"  # the new export, not a mix of both
    assert leftovers(tmp_path) == []


def test_export_into_a_new_empty_or_previous_export_folder(monkeypatch, capsys, tmp_path):
    new = tmp_path / "a" / "b" / "new"
    code, out, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", new, "--storage-dtype", "bfloat16")
    assert code in (0, None), err
    assert {"config.json", "model.safetensors", "tokenizer.json", "provenance.json"} <= {p.name for p in new.iterdir()}
    assert load_model(new).facts.family == "ar"
    assert leftovers(new.parent) == []
    failed = tmp_path / "failed"  # a refused export into a new folder leaves no folder behind
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", failed, "--layout", "llada")
    assert_one_line_error(code, err, "LLaDA layout holds llada models")
    assert not failed.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", empty)[0] in (0, None)
    assert (empty / "model.safetensors").is_file() and leftovers(tmp_path) == []
    # A previous export (only files an export writes) is replaced: the same command can run again.
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-teacher", "--out", new, "--shards", "2")
    assert code in (0, None), err
    assert not (new / "model.safetensors").exists() and (new / "model.safetensors.index.json").is_file()
    assert load_model(new).facts.family == "llada"
    assert leftovers(new.parent) == []


def test_export_refuses_a_file_as_out(monkeypatch, capsys, tmp_path):
    out = tmp_path / "model"
    out.write_text("a file")
    code, _, err = run_cli(monkeypatch, capsys, "export", "tiny-ar", "--out", out, "--overwrite")
    assert_one_line_error(code, err, "not a folder")
    assert out.read_text() == "a file" and leftovers(tmp_path) == []


TINY = {
    "family": "llada", "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
                                 "max_length": 256},
    "tasks": {"arith": 1.0}, "vocab_size": 300, "gen_length": 32, "num_examples": 16, "batch_size": 8,
    "warmup_steps": 0, "eval_every": 0, "threads": 1, "steps": 1, "save_every": 1,
}


@pytest.mark.parametrize("mistake", [
    {"init_from": "no/such/folder"},  # fails building the network
    {"tasks": {"arith": 0.5, "no-such-task": 0.5}, "tokenizer_from": "tiny-teacher"},  # fails making the examples
])
def test_a_failed_train_start_does_not_block_the_corrected_run(tmp_path, mistake):
    out = tmp_path / "run"
    with pytest.raises(D3llmError):
        train(TrainConfig.from_dict({**TINY, **mistake}), out)
    assert not (out / "train_config.yaml").exists()
    assert not out.exists() or not any(out.iterdir())
    corrected = TrainConfig.from_dict({**TINY, **{k: v for k, v in mistake.items() if k == "tokenizer_from"}})
    assert train(corrected, out) == out
    assert yaml.safe_load((out / "train_config.yaml").read_text())["steps"] == 1
    assert load_model(out).facts.family == "llada"


def test_a_failed_train_command_then_the_corrected_one(monkeypatch, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # an existing empty folder is fine
    bad, good = tmp_path / "bad.yaml", tmp_path / "good.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "init_from": str(tmp_path / "missing")}))
    good.write_text(yaml.safe_dump(TINY))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--config", bad, "--out", out)
    assert_one_line_error(code, err, "missing")
    assert list(out.iterdir()) == []
    code, stdout, err = run_cli(monkeypatch, capsys, "train", "--config", good, "--out", out)
    assert code in (0, None), err
    assert "model written to" in stdout
