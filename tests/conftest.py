"""Shared fixtures: toy models of each family, a tiny tokenizer, one torch thread; the `e2e` tier.

Tests run with one torch thread: two processes with several threads each on 2 cores slow
torch 30-50x (docs/platform-notes.md), and a background training job may share
the machine.

Tiers: every test under tests/integration/ is marked `e2e` here (whole commands, servers,
training runs, subprocesses); unit/ and equivalence/ form the fast tier (`make test-fast`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

from d3llm.models import DiffusionLM, make_config  # noqa: E402
from d3llm.models.tokenizer import build_tokenizer  # noqa: E402
from d3llm.tasks import get_task  # noqa: E402

VOCAB = 64
E2E_DIR = Path(__file__).parent / "integration"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


def toy_model(family: str, seed: int = 0, vocab_size: int = VOCAB, **shape) -> DiffusionLM:
    """A randomly initialised model of `family` with a few thousand parameters."""
    config = make_config(
        family, vocab_size=vocab_size, mask_token_id=None if family == "ar" else 2,
        eos_token_id=1, pad_token_id=0,
        **{"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
           "intermediate_size": 48, "max_length": 128, **shape},
    )
    model = DiffusionLM.new(config, seed=seed).eval()
    with torch.no_grad():
        # Sharper predictions than a fresh init: entropies and confidences then differ by far
        # more than float noise, so greedy decisions are not decided by rounding.
        model.net.lm_head.weight.mul_(25)
    return model


def tokenizer_model(tokenizer, family: str = "llada", seed: int = 0, **shape) -> DiffusionLM:
    """A toy model of `family` over `tokenizer`'s vocabulary and special token ids."""
    model = toy_model(family, seed=seed, vocab_size=len(tokenizer), **{"max_length": 160, **shape})
    model.net.config.eos_token_id = tokenizer.eos_token_id
    if family != "ar":
        model.net.config.mask_token_id = tokenizer.mask_token_id
    return model


def save_toy_model(path, tokenizer, family: str = "llada", seed: int = 0, **shape):
    """`tokenizer_model` saved with its tokenizer as a loadable model folder; returns `path`."""
    tokenizer_model(tokenizer, family, seed, **shape).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_cli(monkeypatch, capsys, *args):
    """Run `d3llm ARGS` in-process; returns (exit code, stdout, stderr)."""
    from d3llm.cli import main

    monkeypatch.setattr(sys, "argv", ["d3llm", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="session")
def tiny_tokenizer():
    corpus = []
    for name in ("arith", "code"):
        for p in get_task(name).problems("train", 300, seed=0):
            corpus += [p.prompt, p.target]
    return build_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tiny_tokenizer):
    """A toy LLaDA model folder over the tiny tokenizer, shared by the CLI, eval and serve tests
    (read-only: a test that needs a changed model copies it)."""
    return save_toy_model(tmp_path_factory.mktemp("toy") / "toy-llada", tiny_tokenizer)


@pytest.fixture(scope="session")
def lm(model_dir):
    """`model_dir` loaded (a `LoadedModel`)."""
    from d3llm import load_model

    return load_model(model_dir)
