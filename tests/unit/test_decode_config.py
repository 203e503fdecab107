"""`resolve_config`: the one way user settings become a `DecodeConfig` (CLI, `d3llm.generate`,
the server, the lm-eval adapter). A setting the method would ignore is an error."""

import json

import pytest

from d3llm.decode import DecodeSettingError, default_method, resolve_config
from d3llm.decode.config import PRESETS, for_model, preset, validation_method
from d3llm.errors import D3llmError
from d3llm.models.catalog import bundled_models, describe
from d3llm.models.lm import FAMILIES


def test_default_method_by_model_kind():
    assert default_method("llada") == "d3llm" and default_method("ar") == "ar"
    assert default_method("block") == "d3llm-block"
    assert resolve_config(None, "llada") == PRESETS["d3llm"]
    assert resolve_config(None, "ar") == PRESETS["ar"]
    assert resolve_config(None, "llada", max_new_tokens=16).max_new_tokens == 16


def test_the_catalog_names_the_same_default():
    """`d3llm models` (no torch) states the rule itself; it must agree with `default_method`."""
    for name, path in bundled_models().items():
        family = json.loads((path / "config.json").read_text()).get("d3llm_family")
        assert describe(path, name).default_method == default_method(family), name


def test_the_catalog_names_the_same_methods_for_every_family(tmp_path):
    for family in FAMILIES:
        folder = tmp_path / family
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"d3llm_family": family}))
        (folder / "provenance.json").write_text(json.dumps({"final_validation": {"arith_accuracy_pct": 50.0}}))
        summary = describe(folder)
        assert summary.default_method == default_method(family), family
        assert summary.validation_method == validation_method(family), family  # the trainer's default
        (folder / "config.json").write_text(json.dumps({"d3llm_family": family, "d3llm_block_size": 4,
                                                        "d3llm_decode_block_size": 8}))
        expected = for_model(preset("vanilla" if family != "ar" else "ar", cache="none"), family, 4, 8).block_size
        assert describe(folder).block_size == (None if family == "ar" else expected), family


def test_settings_that_apply_are_accepted():
    assert resolve_config("d3llm-cache", "llada", cache_delay=2, refresh_interval=4).refresh_interval == 4
    assert resolve_config("d3llm-cache", "llada", refresh_waiting=False).refresh_waiting is False
    assert resolve_config("d3llm", "dream", forward_uncreated=False).forward_uncreated is False
    assert resolve_config("d3llm-cache", "llada", cache_uncreated=True).cache_uncreated is True
    assert resolve_config("fast-dllm", "dream", cache_uncreated=True).cache_uncreated is True
    assert resolve_config("vanilla", "llada", tokens_per_step=2, rank_by="entropy").tokens_per_step == 2
    assert resolve_config("fast-dllm", "llada", threshold=0.8, forcing="block+global").threshold == 0.8
    assert resolve_config("ar", "ar", max_new_tokens=8, temperature=0.5, seed=3).seed == 3
    # a setting that changes what applies is read first: topk made explicit, then its step size
    assert resolve_config("d3llm", "llada", strategy="topk", tokens_per_step=2).strategy == "topk"
    assert resolve_config("vanilla", "llada", cache="delayed", cache_delay=0).cache_delay == 0


@pytest.mark.parametrize("method, family, settings, setting, message", [
    ("d3llm", "llada", {"refresh_interval": 2}, "refresh_interval",
     "`refresh_interval` has no effect with method 'd3llm' (cache none)"),
    ("d3llm", "llada", {"refresh_waiting": False}, "refresh_waiting",
     "`refresh_waiting` has no effect with method 'd3llm' (cache none)"),
    ("fast-dllm-dual", "llada", {"forward_uncreated": False}, "forward_uncreated",
     "`forward_uncreated` has no effect with method 'fast-dllm-dual' (cache dual)"),
    ("d3llm", "llada", {"cache_uncreated": True}, "cache_uncreated",
     "`cache_uncreated` has no effect with method 'd3llm' (cache none)"),
    ("fast-dllm-dual", "dream", {"cache_uncreated": True}, "cache_uncreated",
     "`cache_uncreated` has no effect with method 'fast-dllm-dual' (cache dual): only the prefix and delayed"),
    ("fast-dllm", "llada", {"cache_delay": 2}, "cache_delay",
     "`cache_delay` has no effect with method 'fast-dllm' (cache prefix)"),
    ("vanilla", "llada", {"threshold": 0.3}, "threshold",
     "`threshold` has no effect with method 'vanilla' (strategy topk)"),
    ("vanilla", "llada", {"forcing": "block+global"}, "forcing", "`forcing` has no effect with method 'vanilla'"),
    ("d3llm", "llada", {"tokens_per_step": 4}, "tokens_per_step",
     "`tokens_per_step` has no effect with method 'd3llm' (strategy entropy)"),
    ("fast-dllm", "llada", {"rank_by": "entropy"}, "rank_by", "`rank_by` has no effect with method 'fast-dllm'"),
    ("d3llm", "llada", {"seed": 3}, "seed", "`seed` has no effect with method 'd3llm' (temperature 0): it seeds sampling"),
    ("ar", "ar", {"threshold": 0.4}, "threshold", "`threshold` has no effect with method 'ar'"),
    ("ar", "ar", {"cache": "delayed"}, "cache", "`cache` has no effect with method 'ar'"),
    ("ar", "ar", {"block_size": 8}, "block_size", "`block_size` has no effect with method 'ar'"),
    ("ar", "ar", {"early_stop": False}, "early_stop", "`early_stop` has no effect with method 'ar'"),
    ("dparallel", "llada", {"stale_candidates": False}, "stale_candidates",
     "`stale_candidates` has no effect with method 'dparallel' (early_stop off): it concerns the columns early stop"),
])
def test_settings_a_method_ignores_are_errors(method, family, settings, setting, message):
    with pytest.raises(DecodeSettingError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        resolve_config(method, family, **settings)
    assert error.value.setting == setting and isinstance(error.value, D3llmError)


def test_method_and_model_kind_must_match():
    with pytest.raises(DecodeSettingError, match="`method` 'ar' cannot decode a diffusion model") as error:
        resolve_config("ar", "llada")
    assert error.value.setting == "method"
    with pytest.raises(DecodeSettingError, match="`method` 'vanilla' cannot decode an autoregressive model"):
        resolve_config("vanilla", "ar")


def test_bad_names_and_values_name_the_setting():
    with pytest.raises(DecodeSettingError, match="unknown method 'turbo'") as error:
        resolve_config("turbo", "llada")
    assert error.value.setting == "method"
    with pytest.raises(DecodeSettingError, match="`method` is not a setting"):
        resolve_config("d3llm", "llada", method="ar")
    with pytest.raises(DecodeSettingError, match=r"unknown decode setting\(s\) \['thresh'\]"):
        resolve_config("d3llm", "llada", thresh=0.4)
    with pytest.raises(DecodeSettingError, match=r"`threshold` must be in \(0, 10\]") as error:
        resolve_config("d3llm", "llada", threshold=-1)
    assert error.value.setting == "threshold"
    with pytest.raises(DecodeSettingError, match="`cache_uncreated` reads the masks .* needs `forward_uncreated` "
                                                 "true") as error:
        resolve_config("d3llm-cache", "llada", cache_uncreated=True, forward_uncreated=False)
    assert error.value.setting == "cache_uncreated"
    with pytest.raises(DecodeSettingError, match="`cache_uncreated` must be true or false, got 'yes'"):
        resolve_config("d3llm-cache", "llada", cache_uncreated="yes")


def test_forcing_values_and_family_defaults():
    """`forcing` left open becomes the authors' rule of the model's family (their LLaDA loop adds the
    global best, their Dream loop does not); a named rule wins; other names are errors."""
    from d3llm.decode.config import for_model

    assert for_model(resolve_config("d3llm", "llada"), "llada", None).forcing == "block+global"
    assert for_model(resolve_config("d3llm", "dream"), "dream", None).forcing == "block"
    assert for_model(resolve_config("d3llm-block", "block"), "block", 8).forcing == "block"
    assert for_model(resolve_config("d3llm", "llada", forcing="block"), "llada", None).forcing == "block"
    with pytest.raises(DecodeSettingError, match="`forcing` must be one of block, block[+]global, got 'global'") as error:
        resolve_config("d3llm", "llada", forcing="global")
    assert error.value.setting == "forcing"
    with pytest.raises(DecodeSettingError, match="`stale_candidates` must be true or false, got 1"):
        resolve_config("d3llm", "llada", stale_candidates=1)
