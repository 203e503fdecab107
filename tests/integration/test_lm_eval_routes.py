"""The two lm-eval routes of the README: our model `d3llm` with lm-eval's argument names
(`pretrained=`), and lm-eval's own `local-chat-completions` model against `d3llm serve`.
Offline: a local YAML task over a JSONL file (test_lm_eval_adapter.py's)."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lm_eval  # noqa: E402
import torch  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from d3llm.errors import D3llmError  # noqa: E402
from d3llm.eval import lm_eval_adapter  # noqa: E402
from d3llm.eval.lm_eval_adapter import D3llmLM  # noqa: E402
from d3llm.models import load_model  # noqa: E402
from d3llm.serve import background_server, create_app  # noqa: E402
from tests.integration.test_lm_eval_adapter import N, run_harness, task_dir, toy_dir  # noqa: E402, F401


def test_pretrained_names_the_model_as_in_lm_eval(task_dir, toy_dir):  # noqa: F811
    by_model = run_harness(task_dir, f"model={toy_dir},method=vanilla,max_new_tokens=8,batch_size=2")
    by_pretrained = run_harness(task_dir, f"pretrained={toy_dir},method=vanilla,max_new_tokens=8,batch_size=2")
    assert by_pretrained["config"]["d3llm_model"] == by_model["config"]["d3llm_model"] == str(toy_dir)
    answers = [[s["resps"] for s in out["samples"]["d3llm_local_arith"]] for out in (by_model, by_pretrained)]
    assert answers[0] == answers[1] and len(answers[0]) == N
    with pytest.raises(D3llmError, match="name two models"):
        D3llmLM(model=str(toy_dir), pretrained="tiny-ar")


def test_lm_evals_default_device_is_not_a_warning_without_cuda(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    caplog.set_level(logging.INFO, logger="lm_eval")
    assert lm_eval_adapter._device("cuda:0") == "auto"  # lm-eval's command line sends it by default
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    caplog.clear()
    assert lm_eval_adapter._device("cuda:1") == "auto"  # asked for by name: a warning
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_local_chat_completions_against_the_server(task_dir, toy_dir):  # noqa: F811
    lm = load_model(toy_dir)
    with background_server(create_app(lm, max_tokens_limit=64)) as url:
        tasks = TaskManager(include_path=str(task_dir), include_defaults=False)
        out = lm_eval.simple_evaluate(
            model="local-chat-completions", tasks=["d3llm_local_arith"], task_manager=tasks,
            model_args=f"model={toy_dir.name},base_url={url}/v1/chat/completions,num_concurrent=1,max_retries=1",
            apply_chat_template=True, log_samples=True, bootstrap_iters=0)
    samples = out["samples"]["d3llm_local_arith"]
    assert len(samples) == N
    # the server decoded each chat with its default method: the in-process route's answers
    direct = run_harness(task_dir, f"model={toy_dir},batch_size=1", apply_chat_template=True)
    assert [s["resps"] for s in samples] == [s["resps"] for s in direct["samples"]["d3llm_local_arith"]]


def test_d3llm_lm_eval_help_says_what_it_adds(monkeypatch, capsys):
    import sys

    from d3llm.eval import lm_eval_cli

    monkeypatch.setattr(sys, "argv", ["d3llm-lm-eval", "-h"])
    with pytest.raises(SystemExit):
        lm_eval_cli.main()
    out = capsys.readouterr().out
    assert out.startswith("d3llm-lm-eval: lm-evaluation-harness's command line with the model `d3llm`")
    assert "pretrained=" in out and "local-chat-completions" in out
    assert out.index("lm-eval's own help follows") < out.index("usage:")  # then lm-eval's own
