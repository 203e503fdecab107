"""lm-evaluation-harness runs our decode loop: a local YAML task over a JSONL file, offline.

lm-eval is in the `dev` extra, so these tests run in CI; they need no network
(HF_DATASETS_OFFLINE=1, `dataset_path: json` over a file made here)."""

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from d3llm.decode import generate, preset  # noqa: E402
from d3llm.errors import D3llmError  # noqa: E402
from d3llm.eval.lm_eval_adapter import AUTO_BATCH_SIZE, D3llmLM, _batch_size, _cut  # noqa: E402
from d3llm.eval.runner import evaluate  # noqa: E402
from d3llm.models import load_model  # noqa: E402
from d3llm.models.tokenizer import prompt_ids  # noqa: E402
from d3llm.tasks import get_task  # noqa: E402
from tests.conftest import save_toy_model  # noqa: E402

N = 6
TASK_YAML = """\
task: d3llm_local_arith
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["Question:"]
  max_gen_toks: 64
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
# Scored by our own arith scorer, so lm-eval's accuracy must equal `d3llm eval`'s.
UTILS = """\
from d3llm.tasks import get_task

TASK = get_task("arith")


def process_results(doc, results):
    return {"acc": float(TASK.extract_answer(results[0]) == doc["answer"])}
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    problems = get_task("arith").problems("test", N, seed=0)
    data = folder / "arith.jsonl"
    data.write_text("".join(json.dumps({"question": p.prompt, "answer": p.answer}) + "\n" for p in problems))
    (folder / "local_arith.yaml").write_text(TASK_YAML.format(data=data))
    (folder / "utils.py").write_text(UTILS)
    return folder


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory, tiny_tokenizer):
    return save_toy_model(tmp_path_factory.mktemp("lm_eval_model") / "toy-llada", tiny_tokenizer)


def run_harness(task_dir, model_args, **options):
    tasks = TaskManager(include_path=str(task_dir), include_defaults=False)  # skip indexing lm-eval's own tasks
    return lm_eval.simple_evaluate(model="d3llm", model_args=model_args, tasks=["d3llm_local_arith"],
                                   task_manager=tasks, log_samples=True, bootstrap_iters=0, **options)


def test_diffusion_answers_equal_the_decode_loop(task_dir, toy_dir):
    out = run_harness(task_dir, f"model={toy_dir},method=d3llm,batch_size=4,block_size=16,threshold=0.3")
    samples = out["samples"]["d3llm_local_arith"]
    assert len(samples) == N
    lm = load_model(toy_dir)
    config = preset("d3llm", max_new_tokens=64, block_size=16, threshold=0.3)  # max_new_tokens: the task's max_gen_toks
    tokens = forwards = 0
    for sample in samples:
        one = generate(lm.model, [prompt_ids(lm.tokenizer, sample["doc"]["question"])], config,
                       lm.tokenizer.pad_token_id)
        text = lm.tokenizer.decode(one.sequences[0], skip_special_tokens=True)
        assert sample["resps"][0][0] == _cut(text, ["Question:"])
        tokens, forwards = tokens + one.num_tokens[0], forwards + one.row_forwards[0]
    assert out["config"]["d3llm_method"] == "d3llm"
    assert out["config"]["d3llm_tokens_per_forward"] == pytest.approx(tokens / forwards)

    # With lm-eval's --apply_chat_template the harness formats the chat (through the model's
    # template) and the adapter must not wrap it a second time: the same answers.
    templated = run_harness(task_dir, f"model={toy_dir},method=d3llm,batch_size=4,block_size=16,threshold=0.3",
                            apply_chat_template=True)
    assert [s["resps"] for s in templated["samples"]["d3llm_local_arith"]] == [s["resps"] for s in samples]


def test_accuracy_equals_d3llm_eval(task_dir):
    out = run_harness(task_dir, "model=tiny-ar,max_new_tokens=64,batch_size=8")
    ours = evaluate(load_model("tiny-ar"), get_task("arith"), preset("ar", max_new_tokens=64), n=N, seed=0)
    assert ours.accuracy_pct > 0  # the check below compares real answers, not two zeros
    assert 100 * out["results"]["d3llm_local_arith"]["acc,none"] == pytest.approx(ours.accuracy_pct)


def test_stop_sequences_cut_at_the_first_one():
    assert _cut("a b Question: c\n\nd", ["\n\n", "Question:"]) == "a b "
    assert _cut("no stop here", ["Question:"]) == "no stop here"


def test_the_model_loads_in_its_recipe_dtype_unless_model_args_name_one(tmp_path):
    """`dtype=auto` (the default) is the decode recipe's dtype on a CPU, as the commands load it."""
    import shutil

    import torch

    from d3llm.models import bundled_models
    from d3llm.models.recipe import RECIPE_FILE, Recipe, write_recipe

    folder = tmp_path / "student"
    shutil.copytree(bundled_models()["tiny-d3llm"], folder)
    write_recipe(folder, Recipe("d3llm", {"threshold": 0.5}, "bfloat16"), overwrite=(folder / RECIPE_FILE).exists())
    assert D3llmLM(model=str(folder)).lm.model.dtype == torch.bfloat16
    assert D3llmLM(model=str(folder), dtype="float32").lm.model.dtype == torch.float32


def test_unsupported_requests_and_arguments(toy_dir):
    lm = D3llmLM(model=str(toy_dir), method="vanilla")
    with pytest.raises(NotImplementedError, match="generation tasks only"):
        lm.loglikelihood([])
    with pytest.raises(D3llmError, match="unknown decode setting"):
        D3llmLM(model=str(toy_dir), thresh=0.4)
    with pytest.raises(D3llmError, match=r"`batch_size` must be a positive integer or 'auto' \(= 16\), got 0"):
        D3llmLM(model=str(toy_dir), batch_size="0")
    with pytest.raises(D3llmError, match="`max_new_tokens` must be a positive integer"):
        D3llmLM(model=str(toy_dir), max_new_tokens=0)
    with pytest.raises(D3llmError, match=r"generation kwargs \['top_p'\] are not supported"):
        lm._request_config({"until": [], "top_p": 0.9})


def test_batch_size_auto_is_a_documented_default():
    """lm-eval's `--batch_size auto` (or auto:N) probes memory for HF models; d3llm decodes
    AUTO_BATCH_SIZE prompts together instead, capped by --max_batch_size, and says so."""
    assert _batch_size("auto", None) == AUTO_BATCH_SIZE == 16
    assert _batch_size("auto:4", None) == 16 and _batch_size("auto", 3) == 3
    assert _batch_size("12", None) == 12 and _batch_size(None, None) == 16 and _batch_size(2, 5) == 2
    for bad in ("-1", "big", 0, True):
        with pytest.raises(D3llmError, match="`batch_size` must be a positive integer or 'auto'"):
            _batch_size(bad, None)


def test_progress_bar_and_tpf_in_the_results(task_dir, toy_dir, capsys, caplog):
    with caplog.at_level("INFO", logger="lm_eval.models.d3llm"):
        out = run_harness(task_dir, f"model={toy_dir},method=d3llm,batch_size=4,block_size=16,threshold=0.3",
                          limit=3)
    err = capsys.readouterr().err
    assert "Running generate_until requests" in err and "3/3" in err and "TPF" in err  # tqdm, on stderr
    config = out["config"]
    assert config["d3llm_tokens_per_forward"] == pytest.approx(config["d3llm_num_tokens"] / config["d3llm_forwards"])
    assert config["d3llm_batch_size"] == 4
    (line,) = [r.getMessage() for r in caplog.records if "TPF" in r.getMessage()]
    assert f"TPF {config['d3llm_tokens_per_forward']:.2f}" in line and f"{config['d3llm_forwards']} forwards" in line


def test_lm_eval_has_no_model_plugins():
    """Why `d3llm-lm-eval` exists: lm-eval 0.4 finds a model only in its own mapping or when
    the module defining it has been imported (no entry points), so plain `lm_eval` lacks d3llm."""
    done = subprocess.run(
        [sys.executable, "-c", "from lm_eval.api.registry import get_model; get_model('d3llm')"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "no model for this name found" in done.stderr


def harness_command(task_dir, *args):
    """`d3llm-lm-eval ARGS` as installed (the console script beside this Python)."""
    script = os.path.join(os.path.dirname(sys.executable), "d3llm-lm-eval")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "d3llm.eval.lm_eval_cli"]
    return subprocess.run(
        [*command, "run", "--model", "d3llm", "--tasks", "d3llm_local_arith", "--include_path", str(task_dir),
         "--limit", "2", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})


def test_command_line_sees_the_model(task_dir):
    """`d3llm-lm-eval` (= `python -m d3llm.eval.lm_eval_cli`) is lm-eval's command line with the
    model registered; `--batch_size auto` is the documented default, not a traceback."""
    done = harness_command(task_dir, "--batch_size", "auto", "--model_args", "model=tiny-ar,max_new_tokens=16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "d3llm_local_arith" in done.stdout and "acc" in done.stdout
    assert "d3llm does not probe memory for a batch size; decoding 16 prompts together" in done.stderr
    assert "TPF 1.00" in done.stderr  # the AR model: one token per forward

    done = harness_command(task_dir, "--batch_size", "0", "--model_args", "model=tiny-ar")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "error: `batch_size` must be a positive integer or 'auto' (= 16), got 0"
