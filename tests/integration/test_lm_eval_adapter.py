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
from d3llm.eval.lm_eval_adapter import D3llmLM, _cut  # noqa: E402
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


def test_unsupported_requests_and_arguments(toy_dir):
    lm = D3llmLM(model=str(toy_dir), method="vanilla")
    with pytest.raises(NotImplementedError, match="generation tasks only"):
        lm.loglikelihood([])
    with pytest.raises(D3llmError, match="unknown decode setting"):
        D3llmLM(model=str(toy_dir), thresh=0.4)
    with pytest.raises(D3llmError, match="`batch_size` must be a positive integer"):
        D3llmLM(model=str(toy_dir), batch_size="auto")
    with pytest.raises(D3llmError, match="`max_new_tokens` must be a positive integer"):
        D3llmLM(model=str(toy_dir), max_new_tokens=0)
    with pytest.raises(D3llmError, match=r"generation kwargs \['top_p'\] are not supported"):
        lm._request_config({"until": [], "top_p": 0.9})


def test_command_line_sees_the_model(task_dir):
    """The plain `lm_eval` command does not import d3llm; `python -m d3llm.eval.lm_eval_cli` does.
    Batch size comes from lm-eval's own --batch_size there."""
    done = subprocess.run(
        [sys.executable, "-m", "d3llm.eval.lm_eval_cli", "run", "--model", "d3llm", "--batch_size", "2",
         "--model_args", "model=tiny-ar,max_new_tokens=16", "--tasks", "d3llm_local_arith",
         "--include_path", str(task_dir), "--limit", "2"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "d3llm_local_arith" in done.stdout and "acc" in done.stdout
