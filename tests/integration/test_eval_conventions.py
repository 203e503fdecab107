"""`d3llm eval` and `d3llm sweep` conventions: the fixed test set by default, --n clamped to a file
task (as lm-eval's --limit), --n >= 1, per-sample logs with each row's NFE and TPF, several --task
in one run, a clean stdout, and sweeps that print a table (accuracy with its 95% interval) and
store typed settings."""

import json

import pytest

from d3llm.decode import preset
from d3llm.errors import D3llmError
from d3llm.eval.runner import clamp_n, evaluate
from d3llm.eval.sweep import points_table
from d3llm.models import load_model
from d3llm.tasks import get_task, problem_set_name
from tests.conftest import run_cli

GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 2 more. How many apples does Tom have?", "answer": "3+2=5\n#### 5"},
    {"question": "Ann has 7 pens and loses 2. How many pens does Ann have?", "answer": "7-2=5\n#### 5"},
    {"question": "Bo has 4 cats and gets 4 more. How many cats does Bo have?", "answer": "#### 8"},
]


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k") / "three.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in GSM8K_ROWS))
    return path


def one_line_error(code, err, pattern):
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert pattern in err, err


def eval_args(model_dir, *extra):
    return ["eval", "--model", model_dir, "--method", "vanilla", "--max-new-tokens", 8, "--set", "block_size=4",
            *extra]


def test_n_larger_than_a_file_is_clamped_with_one_note(monkeypatch, capsys, model_dir, gsm8k_file, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, *eval_args(model_dir, "--task", f"gsm8k:{gsm8k_file}", "--n", 50,
                                                             "--json", tmp_path / "r.json"))
    assert code in (0, None), err
    assert err.strip() == "note: gsm8k test: n=50 is more than the 3 problems there; evaluating all 3"
    assert "(test, seed 0, n=3)" in out and json.loads((tmp_path / "r.json").read_text())["n"] == 3
    task = get_task(f"gsm8k:{gsm8k_file}")
    assert clamp_n(task, "test", 2) == (2, None)
    assert clamp_n(get_task("arith"), "test", 10_000) == (10_000, None)  # a generated task draws any number


def test_n_must_be_at_least_one(monkeypatch, capsys, model_dir):
    code, _, err = run_cli(monkeypatch, capsys, *eval_args(model_dir, "--task", "arith", "--n", 0))
    one_line_error(code, err, "`--n` must be >= 1 and at most 1000000 (problems), got 0")
    with pytest.raises(D3llmError, match="`n` must be >= 1"):
        evaluate(load_model(model_dir), get_task("arith"), preset("vanilla", max_new_tokens=8), n=0)


def test_log_samples_hold_each_row_with_its_nfe_and_tpf(monkeypatch, capsys, model_dir, tmp_path):
    samples, result_file = tmp_path / "samples.jsonl", tmp_path / "r.json"
    code, out, err = run_cli(monkeypatch, capsys, *eval_args(model_dir, "--task", "arith", "--n", 3,
                                                             "--json", result_file, "--log-samples", samples))
    assert code in (0, None), err
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    record = json.loads(result_file.read_text())
    assert len(lines) == 3
    problems = get_task("arith").problems("test", 3, seed=0)
    assert [s["prompt"] for s in lines] == [p.prompt for p in problems]  # problem order, not batch order
    for sample, problem in zip(lines, problems):
        assert set(sample) == {"task", "prompt", "response", "extracted_answer", "reference_answer", "correct",
                               "nfe", "num_tokens", "tpf"}
        assert sample["task"] == "arith" and sample["reference_answer"] == problem.answer
        assert sample["extracted_answer"] == get_task("arith").extract_answer(sample["response"])
        assert sample["correct"] == get_task("arith").score(problem, sample["response"])
        assert sample["nfe"] == 8  # vanilla: one token per forward over an 8-token canvas
        assert sample["tpf"] == pytest.approx(sample["num_tokens"] / sample["nfe"])
    assert sum(s["nfe"] for s in lines) == record["nfe"]
    assert sum(s["num_tokens"] for s in lines) == record["num_tokens"]
    assert 100 * sum(s["correct"] for s in lines) / 3 == pytest.approx(record["accuracy_pct"])


def test_several_tasks_in_one_run(monkeypatch, capsys, model_dir, tmp_path):
    samples = tmp_path / "samples.jsonl"
    code, out, err = run_cli(monkeypatch, capsys, *eval_args(
        model_dir, "--task", "arith", "--task", "code", "--n", 2, "--json", tmp_path / "res" / "r.json",
        "--log-samples", samples))
    assert code in (0, None), err
    assert out and not out.startswith("\n") and not out[0].isspace()  # no blank first line
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{model_dir} arith vanilla: accuracy")
    assert lines[1].startswith(f"{model_dir} code vanilla: accuracy")
    files = sorted(p.name for p in (tmp_path / "res").iterdir())
    assert files == ["r-arith.json", "r-code.json"]  # one leaderboard record per task
    for name, task in (("r-arith.json", "arith"), ("r-code.json", "code")):
        record = json.loads((tmp_path / "res" / name).read_text())
        assert record["task"] == task and record["n"] == 2
    assert [json.loads(line)["task"] for line in samples.read_text().splitlines()] == ["arith"] * 2 + ["code"] * 2

    code, out, err = run_cli(monkeypatch, capsys, "leaderboard", tmp_path / "res", "--out", tmp_path / "board",
                             "--no-plots")
    assert code in (0, None), err
    assert "## arith" in out and "## code" in out

    code, _, err = run_cli(monkeypatch, capsys, *eval_args(model_dir, "--task", "arith", "--task", "poetry"))
    one_line_error(code, err, "unknown task 'poetry'")


def test_one_task_writes_the_json_file_as_named(monkeypatch, capsys, model_dir, tmp_path):
    code, out, err = run_cli(monkeypatch, capsys, *eval_args(model_dir, "--task", "arith", "--n", 2,
                                                             "--json", tmp_path / "exact.json"))
    assert code in (0, None), err
    assert not out.startswith("\n") and len(out.splitlines()) == 1
    assert json.loads((tmp_path / "exact.json").read_text())["task"] == "arith"


def test_sweep_prints_a_table_and_stores_typed_settings(monkeypatch, capsys, model_dir, tmp_path):
    out_dir = tmp_path / "sweep"
    args = ["sweep", "--model", model_dir, "--task", "arith", "--method", "d3llm", "--n", 2, "--max-new-tokens", 8,
            "--param", "threshold=0.5,3.0", "--param", "block_size=4", "--param", "early-stop=true", "--out", out_dir]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    assert "{" not in out and "'" not in out
    header, first, second = out.splitlines()[:3]
    assert header.split() == ["threshold", "block_size", "early_stop", "accuracy", "%", "[95%", "CI]", "TPF",
                              "tokens/s"]
    assert first.split()[:3] == ["0.5", "4", "true"] and second.split()[:3] == ["3", "4", "true"]
    curve = json.loads((out_dir / "curve.json").read_text())
    assert sorted(p["settings"]["threshold"] for p in curve["points"]) == [0.5, 3.0]
    assert all(p["settings"]["block_size"] == 4 and p["settings"]["early_stop"] is True for p in curve["points"])
    assert curve["sweep_settings"]["grid"] == {"threshold": [0.5, 3.0], "block_size": [4], "early_stop": [True]}
    point = json.loads((out_dir / "point-000.json").read_text())
    assert point["sweep_point"] == {"threshold": 0.5, "block_size": 4, "early_stop": True}

    # A folder whose sweep values are stored as text resumes too: nothing is decoded again.
    for file in out_dir.glob("point-*.json"):
        record = json.loads(file.read_text())
        record["sweep_point"] = {k: str(v).lower() if isinstance(v, bool) else str(v)
                                 for k, v in record["sweep_point"].items()}
        record["sweep_settings"]["grid"] = {"threshold": ["0.5", "3.0"], "block_size": ["4"], "early-stop": ["true"]}
        file.write_text(json.dumps(record))
    code, again, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None) and "point " not in err, err
    assert again == out


def test_points_table_formats_values():
    records = [{"sweep_point": {"threshold": 0.25, "refresh_interval": None}, "model": "m", "task": "arith",
                "method": "d3llm", "n": 10, "seed": 0, "split": "test", "accuracy_pct": 50.0,
                "tokens_per_forward": 2.5, "tokens_per_second": 100.0}]
    assert points_table(records).splitlines() == [
        "threshold  refresh_interval  accuracy % [95% CI]   TPF  tokens/s",
        "     0.25              none    50.0 [23.7, 76.3]  2.50     100.0"]


@pytest.mark.parametrize("command", ["eval", "sweep"])
def test_without_n_seed_and_split_the_fixed_test_set_is_scored(monkeypatch, capsys, tmp_path, command):
    import d3llm.eval.runner as runner

    seen = {}

    def fake_evaluate(lm, task, config, **kwargs):
        seen.update(n=kwargs["n"], seed=kwargs["seed"], split=kwargs["split"])
        raise SystemExit(0)

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    monkeypatch.setattr("d3llm.eval.sweep.evaluate", fake_evaluate)
    extra = ["--param", "threshold=0.5", "--out", tmp_path / "s"] if command == "sweep" else []
    code, _, err = run_cli(monkeypatch, capsys, command, "-m", "tiny-d3llm", "--task", "arith", *extra)
    assert code in (0, None), err
    assert seen == {"n": 600, "seed": 0, "split": "test"}
    assert problem_set_name(**seen) == "fixed test set, n=600"
