"""`d3llm.files`: output paths checked by a real write, nothing of the user's replaced, atomic
writes that a crash cannot cut short, and readers that refuse what would hang or blow up."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import yaml

from d3llm import files
from d3llm.errors import D3llmError


@pytest.fixture
def loop(tmp_path) -> Path:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return tmp_path / "a"


def bad_places(tmp_path: Path, loop: Path) -> dict[str, Path]:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    (tmp_path / "a-file").write_text("mine")
    return {"proc": Path("/proc/d3llm-test/out.json"), "loop": loop / "out.json",
            "under-a-file": tmp_path / "a-file" / "out.json", "dangling": tmp_path / "dangling",
            "sys": Path("/sys/d3llm-test.json")}


@pytest.mark.parametrize("where", ["proc", "loop", "under-a-file", "dangling", "sys"])
@pytest.mark.parametrize("check", ["file", "folder"])
def test_an_output_that_cannot_be_written_fails_up_front(where, check, tmp_path, loop):
    path = bad_places(tmp_path, loop)[where]
    with pytest.raises(D3llmError, match="--opt") as info:
        if check == "file":
            files.check_out_file(path, "--opt")
        else:
            files.check_out_folder(path, "--opt")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("device", ["/dev/full", "/dev/null"])
def test_a_device_is_not_an_output_file(device):
    with pytest.raises(D3llmError, match="not a regular file"):
        files.check_out_file(Path(device), "--json")


def test_the_probe_leaves_nothing(tmp_path):
    files.check_out_file(tmp_path / "new" / "deeper" / "r.json", "--json")
    files.check_out_folder(tmp_path / "out", "--out")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_only_when_ours_or_overwrite(tmp_path):
    mine = tmp_path / "r.json"
    mine.write_text("user data")
    with pytest.raises(D3llmError, match="--overwrite"):
        files.check_out_file(mine, "--json")
    with pytest.raises(D3llmError, match="--overwrite"):
        files.check_out_file(mine, "--json", ours=lambda p: False)
    files.check_out_file(mine, "--json", ours=lambda p: True)
    files.check_out_file(mine, "--json", overwrite=True)
    assert mine.read_text() == "user data"


def test_claim_folder(tmp_path):
    out = tmp_path / "out"
    files.claim_folder(out, "--out", False, lambda p: False)  # missing: fine
    out.mkdir()
    files.claim_folder(out, "--out", False, lambda p: False)  # empty: fine
    (out / "notes.txt").write_text("mine")
    files.claim_folder(out, "--out", False, lambda p: False, names=["board.md"])  # no clash
    with pytest.raises(D3llmError, match="notes.txt.*--overwrite"):
        files.claim_folder(out, "--out", False, lambda p: False)
    files.claim_folder(out, "--out", False, lambda p: True)  # our marker
    files.claim_folder(out, "--out", True, lambda p: False)  # --overwrite


def test_write_atomic_leaves_the_old_file_when_it_fails(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    target.write_text("old")

    def crash(*_args):
        raise KeyboardInterrupt  # a kill between the write and the rename

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(target, "new" * 1000)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    monkeypatch.undo()
    files.write_atomic(target, "new")
    assert target.read_text() == "new"


def test_append_line_and_read_jsonl_survive_a_cut_last_line(tmp_path):
    log = tmp_path / "curve.jsonl"
    files.append_line(log, json.dumps({"step": 1}))
    files.append_line(log, json.dumps({"step": 2}))
    assert files.read_jsonl(log, "fix it") == [{"step": 1}, {"step": 2}]
    with log.open("a") as f:
        f.write('{"step": 3, "lo')  # what a kill during a plain append leaves
    assert files.read_jsonl(log, "fix it") == [{"step": 1}, {"step": 2}]
    files.append_line(log, json.dumps({"step": 3}))
    log.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(D3llmError, match="curve.jsonl is damaged .*line 2.*fix it"):
        files.read_jsonl(log, "fix it")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    done = threading.Event()

    def read():
        with pytest.raises(D3llmError, match="not a regular file"):
            files.read_json(fifo)
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if not done.is_set():  # unblock the reader before failing
        with open(fifo, "w"):
            pass
    assert done.is_set()


@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"n": ' + "7" * 5001 + "}", "not valid JSON"),
    ("{oops", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_read_json_refuses_damage_in_one_line(tmp_path, text, match):
    path = tmp_path / "r.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(D3llmError, match=match) as info:
        files.read_json(path)
    assert "\n" not in str(info.value)


def test_read_text_size_limit(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2000)
    with pytest.raises(D3llmError, match="more than the 1000"):
        files.read_text(path, max_bytes=1000)


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize("content, match", [
    ((2**62).to_bytes(8, "little") + b"{}", "truncated or not a safetensors"),
    (b"\x01\x00", "truncated or not a safetensors"),
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\x00" * 8), "do not end"),
    (_safetensors({"w": {"dtype": "F32", "shape": [4], "data_offsets": "x"}}, b""), "do not end"),
    (b"\x04\x00\x00\x00\x00\x00\x00\x00{ooo", "not valid JSON"),
])
def test_safetensors_header_checked_against_the_file(tmp_path, content, match):
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(D3llmError, match=match):
        files.safetensors_header(path)


def test_safetensors_header_of_a_whole_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\x00" * 8))
    assert files.safetensors_header(path)["w"]["shape"] == [2]


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 10) + "]\n" for i in range(8))


@pytest.mark.parametrize("text, match", [
    (BOMB, "expands to more than"),
    ("&a [*a]", "refers to itself"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply|expands"),
])
def test_yaml_bombs_are_refused(text, match):
    with pytest.raises(yaml.YAMLError, match=match):
        files.load_yaml(text)


def test_yaml_keeps_shared_values_and_1_2_floats():
    assert files.load_yaml("a: &x [1, 2]\nb: *x\nlr: 5e-5\n") == {"a": [1, 2], "b": [1, 2], "lr": 5e-5}
