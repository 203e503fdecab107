"""A Fast-dLLM v2 checkpoint in the official layout against the official code.

tests/equivalence/official/make_fast_dllm_v2_fixtures.py built `official/fast-dllm-v2-tiny` with
the authors' modelling code (transformers 4.56, a side environment) and stored what that code
computed: full-forward logits under its own mask, and what its `generate` returned for prompts
of every length class (shorter than a block, whole blocks, and between) at three settings. Here
our loader and our `fast-dllm-v2` preset must give the same.

Our loop counts one iteration fewer where the official code forwards the prompt's whole blocks
before a block that begins inside the prompt (a forward that commits nothing: ours makes it as
the first model call of the iteration that decodes that block). Prompts exactly one block long
are left out: the official generate then decodes the first block without the prompt in view
(no prefill, and the window holds masks only), which we do not reproduce
(docs/block-diffusion.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from d3llm.decode import generate, resolve_config
from d3llm.models import DiffusionLM
from d3llm.models.reading import load_network

HERE = Path(__file__).parent / "official"
FIXTURES = json.loads((HERE / "fast_dllm_v2_fixtures.json").read_text())
BLOCK = FIXTURES["generate"]["block_size"]


@pytest.fixture(scope="module")
def model() -> DiffusionLM:
    return DiffusionLM(load_network(HERE / FIXTURES["checkpoint"], dtype=torch.float32)).eval()


def test_the_official_layout_loads_with_its_block_convention(model):
    assert model.facts.family == "block" and model.facts.block_alignment == "absolute"
    assert model.facts.block_size == BLOCK and model.facts.mask_token_id == FIXTURES["generate"]["mask_id"]


@pytest.mark.parametrize("case", range(len(FIXTURES["logits"])))
def test_logits_equal_the_official_model_under_its_own_mask(model, case):
    record = FIXTURES["logits"][case]
    ids = torch.tensor([record["input_ids"]])
    with torch.no_grad():
        raw = model.net(input_ids=ids, attention_mask=model._block_mask(ids, None, None, None)).logits[0]
    torch.testing.assert_close(raw, torch.tensor(record["logits"]), atol=2e-5, rtol=0)


def _official_cases(key: str) -> list[dict]:
    return [c for c in FIXTURES[key] if c["prompt_length"] != BLOCK]


def _ours(model, case: dict):
    config = resolve_config("fast-dllm-v2", "block", max_new_tokens=FIXTURES["generate"]["max_new_tokens"],
                            threshold=case["threshold"], sub_block_size=case["small_block_size"])
    return generate(model, [case["prompt"]], config, pad_token_id=0)


@pytest.mark.parametrize("setting", sorted(FIXTURES["settings"]))
def test_fast_dllm_v2_preset_reproduces_the_official_generate(model, setting):
    cases = [c for c in _official_cases("cases") if c["setting"] == setting]
    assert len(cases) >= 20
    tokens, forwards = [], []
    for i, case in enumerate(cases):
        out = _ours(model, case)
        eos = FIXTURES["generate"]["stop_token"]
        ours = out.sequences[0] + ([eos] if out.num_tokens[0] > len(out.sequences[0]) else [])
        if ours != case["response"]:
            tokens.append((case["prompt_length"], ours, case["response"]))
        official = case["forwards"] - (1 if case["prefill"] and case["prompt_length"] % BLOCK else 0)
        if out.nfe != official:
            forwards.append((case["prompt_length"], out.nfe, official))
    assert not tokens and not forwards, f"of {len(cases)}: tokens {tokens[:2]}; forwards {forwards[:4]}"


def test_prompts_of_any_length_decode_together_as_alone(model):
    """Each row has its own block geometry: a batch decodes what each prompt decodes alone."""
    cases = [c for c in _official_cases("cases") if c["setting"] == "a"][:6]
    alone = [_ours(model, c).sequences[0] for c in cases]
    config = resolve_config("fast-dllm-v2", "block", max_new_tokens=FIXTURES["generate"]["max_new_tokens"],
                            threshold=cases[0]["threshold"], sub_block_size=cases[0]["small_block_size"])
    batch = generate(model, [c["prompt"] for c in cases], config, pad_token_id=0)
    assert batch.sequences == alone
