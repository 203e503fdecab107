"""The bundled models load by name and keep their accuracy: a change that breaks the models,
the tokenizer, the tasks or the baseline decoders cannot land.

Floors are set a few points under what each model reached on this fixed sample when it was
bundled (see its provenance.json and the README); the sample is small to keep the test fast.
"""

import json

import pytest

from d3llm.decode import preset
from d3llm.eval.runner import evaluate
from d3llm.models import bundled_models, load_model
from d3llm.models.catalog import describe
from d3llm.tasks import get_task

SAMPLE = 24  # test problems per check


def own_method(name: str) -> str:
    """A model's own decoder, the first of the presets its provenance lists: the baselines'
    one-token decoders, each student's the one it was distilled for."""
    return describe(bundled_models()[name], name).methods[0]


# (model, task) -> minimum accuracy % on the first SAMPLE test problems (seed 0): one problem
# under what the bundled model reaches on them (the figures: docs/notebook/2026-12-07-test-history.md).
FLOORS: dict[tuple[str, str], float] = {
    ("tiny-ar", "arith"): 91.0, ("tiny-ar", "arith-long"): 87.0, ("tiny-ar", "code"): 91.0,
    ("tiny-teacher", "arith"): 83.0, ("tiny-teacher", "arith-long"): 83.0, ("tiny-teacher", "code"): 83.0,
    ("tiny-d3llm", "arith"): 91.0, ("tiny-d3llm", "arith-long"): 83.0, ("tiny-d3llm", "code"): 87.0,
    ("tiny-dparallel", "arith"): 91.0, ("tiny-dparallel", "arith-long"): 87.0, ("tiny-dparallel", "code"): 87.0,
    ("tiny-block", "arith"): 91.0, ("tiny-block", "arith-long"): 91.0, ("tiny-block", "code"): 91.0,
    ("tiny-block-d3llm", "arith"): 91.0, ("tiny-block-d3llm", "arith-long"): 87.0, ("tiny-block-d3llm", "code"): 91.0,
    ("tiny-dream", "arith"): 87.0, ("tiny-dream", "arith-long"): 62.0, ("tiny-dream", "code"): 66.0,
}
# Students are distilled for parallelism: tokens per forward on arith with their decoder stays
# above a floor, below what each reaches on the same sample (the same notebook entry).
TPF_FLOORS: dict[str, float] = {"tiny-d3llm": 6.5, "tiny-dparallel": 5.0, "tiny-block-d3llm": 5.0}
EXPECTED_MODELS = sorted({name for name, _ in FLOORS} | set(TPF_FLOORS))


def test_every_expected_model_is_bundled_with_its_records():
    bundled = bundled_models()
    assert sorted(bundled) == EXPECTED_MODELS
    for name, folder in bundled.items():
        provenance = json.loads((folder / "provenance.json").read_text())
        assert provenance["command"].startswith(("d3llm train", "d3llm distill")) and "seed" in provenance
        assert provenance["code_version"] and provenance["train_seconds"] > 0


# The slowest pairs (vanilla decoding commits one token per forward over arith-long's long
# prompts; timings in the same notebook entry): `make test-all` runs them.
SLOW = {("tiny-teacher", "arith-long"), ("tiny-dream", "arith-long")}


@pytest.mark.parametrize("name, task", [pytest.param(*key, marks=pytest.mark.slow) if key in SLOW else key
                                        for key in sorted(FLOORS)])
def test_accuracy_stays_above_its_floor(name, task):
    lm = load_model(name)
    result = evaluate(lm, get_task(task), preset(own_method(name)), n=SAMPLE, seed=0, batch_size=SAMPLE)
    assert result.accuracy_pct >= FLOORS[name, task], result


@pytest.mark.parametrize("name", sorted(TPF_FLOORS))
def test_students_keep_their_parallelism(name):
    lm = load_model(name)
    result = evaluate(lm, get_task("arith"), preset(own_method(name)), n=SAMPLE, seed=0, batch_size=SAMPLE)
    assert result.tokens_per_forward >= TPF_FLOORS[name], result
