"""Recipes read numbers as a user writes them."""

import pytest

from d3llm.errors import D3llmError
from d3llm.train.config import TrainConfig, load_yaml


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    assert load_yaml("lr: 5e-5\nsteps: 10\nname: 2e") == {"lr": 5e-5, "steps": 10, "name": "2e"}
    recipe = tmp_path / "r.yaml"
    recipe.write_text("family: ar\nlr: 3e-4\nsteps: 10\n")
    assert TrainConfig.from_yaml(recipe).lr == 3e-4


def test_examples_is_distinct_or_drawn():
    assert TrainConfig().examples == "distinct"
    assert TrainConfig(examples="drawn").examples == "drawn"
    with pytest.raises(D3llmError, match="`examples` must be distinct or drawn, got 'random'"):
        TrainConfig(examples="random")
