"""The `d3llm` command: model loading from the command line, and one-line errors."""

import json
import subprocess
import sys

import pytest

from tests.conftest import run_cli


def assert_one_line_error(code, err, pattern):
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


def test_generate_loads_a_folder_and_answers(monkeypatch, capsys, model_dir):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "--method", "vanilla",
                             "--max-new-tokens", 8, "--set", "block_size=4", "--stats", "How many apples?")
    assert code in (0, None), err
    assert "nfe=8" in err and "tpf=" in err  # one token per forward over an 8-token canvas


@pytest.mark.parametrize("method", ["vanilla", "fast-dllm", "fast-dllm-dual", "dparallel", "d3llm", "d3llm-cache"])
def test_generate_streams_the_same_answer(monkeypatch, capsys, model_dir, method):
    args = ["generate", "--model", model_dir, "--method", method, "--max-new-tokens", 16, "--set", "block_size=8"]
    code, plain, err = run_cli(monkeypatch, capsys, *args, "Tom has 3 apples.")
    assert code in (0, None), err
    code, streamed, err = run_cli(monkeypatch, capsys, *args, "--stream", "Tom has 3 apples.")
    assert code in (0, None), err
    assert streamed == plain


def test_generate_errors(monkeypatch, capsys, model_dir, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", "no-such-model", "hi")
    assert_one_line_error(code, err, "no bundled model, folder or hub id (ORG/NAME) named 'no-such-model'")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", tmp_path / "missing", "hi")
    assert_one_line_error(code, err, "no bundled model, folder or hub id (ORG/NAME) named")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "   ")
    assert_one_line_error(code, err, "the prompt is empty")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "word " * 200)
    assert_one_line_error(code, err, "exceeds the model's maximum length 160")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "--set", "block_size=0", "hi")
    assert_one_line_error(code, err, "`block_size` must be a positive integer")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "--set", "thresh=1", "hi")
    assert_one_line_error(code, err, "decode setting 'thresh=1' must be NAME=VALUE")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "--method", "turbo", "hi")
    assert_one_line_error(code, err, "unknown method 'turbo'; choose one of vanilla, fast-dllm")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "--set", "early_stop=maybe", "hi")
    assert_one_line_error(code, err, "cannot read 'maybe'")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "--method", "d3llm",
                           "--set", "refresh_interval=2", "hi")  # a setting the method ignores
    assert_one_line_error(code, err, "`refresh_interval` has no effect with method 'd3llm' (cache none)")
    code, _, err = run_cli(monkeypatch, capsys, "chat", "--model", model_dir, "--method", "vanilla",
                           "--set", "seed=3")  # chat goes through the same check
    assert_one_line_error(code, err, "`seed` has no effect with method 'vanilla' (temperature 0)")


def test_generate_reports_broken_checkpoints(monkeypatch, capsys, model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", broken, "hi")
    assert_one_line_error(code, err, "is corrupted or truncated")
    config = json.loads((model_dir / "config.json").read_text())
    config["hidden_size"] = 64
    weights.write_bytes((model_dir / "model.safetensors").read_bytes())
    (broken / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(monkeypatch, capsys, "generate", "--model", broken, "hi")
    assert_one_line_error(code, err, "does not match the weights")


def test_console_script_exits_cleanly_on_bad_model():
    """The installed entry point itself (a real process): one line, exit 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "d3llm.cli", "generate", "--model", "nope", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "no bundled model, folder or hub id (ORG/NAME) named 'nope'")


def test_eval_writes_a_complete_results_record(monkeypatch, capsys, model_dir, tmp_path):
    out = tmp_path / "res" / "r.json"
    code, stdout, err = run_cli(monkeypatch, capsys, "eval", "--model", model_dir, "--task", "arith", "--n", 3,
                                "--method", "vanilla", "--max-new-tokens", 8, "--json", out)
    assert code in (0, None), err
    record = json.loads(out.read_text())
    for key in ("accuracy_pct", "tokens_per_forward", "tokens_per_second", "nfe", "n", "model", "task",
                "method", "seed", "decode_config", "code_version", "machine"):
        assert key in record, key
    assert record["n"] == 3 and record["method"] == "vanilla" and record["decode_config"]["max_new_tokens"] == 8
    assert record["nfe"] == 3 * 8 and record["forward_calls"] == 8  # one batch of 3 rows, 8 positions
    assert "accuracy" in stdout and "TPF" in stdout
    code, _, err = run_cli(monkeypatch, capsys, "eval", "--model", model_dir, "--task", "arith", "--n", 0)
    assert_one_line_error(code, err, "`--n` must be >= 1 and at most 1000000 (problems), got 0")
    code, _, err = run_cli(monkeypatch, capsys, "eval", "--model", model_dir, "--task", "poetry")
    assert_one_line_error(code, err, "unknown task 'poetry'")


def test_python_api_generate(model_dir):
    import d3llm

    lm = d3llm.load_model(model_dir)
    result = d3llm.generate(lm, ["Tom has 3 apples.", "Ann has 7 pens and 2 more."], method="d3llm",
                            max_new_tokens=16, threshold=0.3, block_size=8)
    assert len(result.texts) == 2 and result.output.nfe >= 1
    assert result.output.trace.shape == (2, 16)
    with pytest.raises(d3llm.D3llmError, match="non-empty"):
        d3llm.generate(lm, [""])
    with pytest.raises(d3llm.D3llmError, match="unknown decode setting"):
        d3llm.generate(lm, "hi", thresh=0.3)


def test_sweep_writes_points_and_resumes(monkeypatch, capsys, model_dir, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--model", model_dir, "--task", "arith", "--method", "d3llm", "--n", 2,
            "--max-new-tokens", 8, "--param", "threshold=0.5,3.0", "--param", "block_size=4", "--out", out]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    curve = json.loads((out / "curve.json").read_text())
    points = curve["points"]
    assert sorted(p["settings"]["threshold"] for p in points) == [0.5, 3.0]  # typed, as the setting reads it
    assert points[0]["tokens_per_forward"] <= points[1]["tokens_per_forward"]
    assert len(list(out.glob("point-*.json"))) == 2
    code, _, err = run_cli(monkeypatch, capsys, *args)  # everything done: nothing decoded again
    assert code in (0, None) and "point threshold" not in err
    code, _, err = run_cli(monkeypatch, capsys, "sweep", "--model", model_dir, "--task", "arith",
                           "--param", "threshold=0.5,-1", "--out", out)
    assert_one_line_error(code, err, "`threshold` must be in (0, 10]")


def test_a_set_max_new_tokens_overrides_the_option(monkeypatch, capsys, model_dir):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--model", model_dir, "--method", "vanilla",
                             "--set", "max_new_tokens=6", "--set", "block_size=3", "--stats", "How many apples?")
    assert code in (0, None), err
    assert "nfe=6" in err
