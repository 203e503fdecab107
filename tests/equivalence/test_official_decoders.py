"""Our presets against the authors' decoders, token for token and forward for forward.

The authors' code is not in this repository: tests/equivalence/official/make_fixtures.py ran it
on the cases of official/cases.py and stored what it produced in official/fixtures.json (with
the commits it ran at and the command). Here our decoder runs the same cases; the response (every
column after the prompt, the EOS tail included) and the number of model calls must be the same,
less the official calls that commit nothing (Fast-dLLM's cached loops forward a finished block
once more; ours does not: docs/method.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d3llm.decode import generate, resolve_config
from tests.equivalence.official.cases import CASES, case_model

FIXTURES = json.loads((Path(__file__).parent / "official" / "fixtures.json").read_text())
BY_NAME = {case.name: case for case in CASES}


def _records(name: str) -> list[dict]:
    return [r for r in FIXTURES["records"] if r["case"] == name]


def test_every_case_has_fixtures():
    assert {r["case"] for r in FIXTURES["records"]} == set(BY_NAME)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_preset_reproduces_the_official_decoder(name):
    case = BY_NAME[name]
    model = case_model(case.model)
    config = resolve_config(case.method, model.facts.family, **case.settings())
    tokens, forwards = [], []
    for i, record in enumerate(_records(name)):
        out = generate(model, [record["prompt"]], config, pad_token_id=0)
        if out.response[0].tolist() != record["response"]:
            tokens.append(i)
        if out.nfe != record["forwards"] - record["idle"]:  # ours skips the official forwards that commit nothing
            forwards.append((i, out.nfe, record["forwards"] - record["idle"]))
    n = len(_records(name))
    assert not tokens and not forwards, (f"of {n}: tokens differ on {tokens}; forwards (record, ours, official) "
                                         f"on {forwards}")
