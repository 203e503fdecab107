"""`resolve_config`: the one way user settings become a `DecodeConfig` (CLI, `d3llm.generate`,
the server, the lm-eval adapter). A setting the method would ignore is an error."""

import json
import subprocess
import sys

import pytest

from d3llm.decode import DecodeSettingError, default_method, resolve_config
from d3llm.decode.config import PRESETS, for_model, methods_for, preset, setting_types, validation_method
from d3llm.decode.policies import DelayedCache
from d3llm.decode.strategies import TopK
from d3llm.errors import D3llmError
from d3llm.models.catalog import bundled_models, describe
from d3llm.models.lm import FAMILIES


def test_default_method_by_model_kind():
    assert default_method("llada") == "d3llm" and default_method("ar") == "ar"
    assert default_method("block") == "d3llm-block"
    assert resolve_config(None, "llada") == PRESETS["d3llm"]
    assert resolve_config(None, "ar") == PRESETS["ar"]
    assert resolve_config(None, "llada", max_new_tokens=16).max_new_tokens == 16


def test_the_catalog_describes_models_by_the_decode_rules(tmp_path):
    """`d3llm models` (no torch) reads a folder's records through the decode rules themselves."""
    for family in FAMILIES:
        folder = tmp_path / family
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"d3llm_family": family, "d3llm_block_size": 4,
                                                        "d3llm_decode_block_size": 8}))
        (folder / "provenance.json").write_text(json.dumps({"final_validation": {"arith_accuracy_pct": 50.0}}))
        summary = describe(folder)
        assert summary.default_method == default_method(family), family
        assert summary.validation_method == validation_method(family), family  # the trainer's default
        assert summary.methods == methods_for(family), family
        expected = for_model(preset(default_method(family)), family, 4, 8).block_size
        assert summary.block_size == (None if family == "ar" else expected), family


def test_each_bundled_model_lists_the_presets_it_is_compared_with():
    for name, path in bundled_models().items():
        summary = describe(path, name)
        assert summary.methods and set(summary.methods) <= set(methods_for(summary.family)), name
        assert json.loads((path / "provenance.json").read_text())["methods"] == list(summary.methods)


def test_decode_settings_import_without_torch():
    code = ("import sys; import d3llm.decode, d3llm.decode.config, d3llm.models.catalog; "
            "d3llm.decode.resolve_config(None, 'llada', threshold=0.4); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_settings_that_apply_are_accepted():
    delayed = resolve_config("d3llm-cache", "llada", cache_delay=2, refresh_interval=4).cache
    assert (delayed.cache_delay, delayed.refresh_interval) == (2, 4)
    assert resolve_config("d3llm-cache", "llada", refresh_while_waiting=False).cache.refresh_while_waiting is False
    assert resolve_config("d3llm", "dream", future_masks="skip").cache.future_masks == "skip"
    assert resolve_config("d3llm-cache", "llada", future_masks="cached").cache.future_masks == "cached"
    assert resolve_config("fast-dllm", "dream", future_masks="cached").cache == PRESETS["fast-dllm-dual"].cache
    topk = resolve_config("vanilla", "llada", tokens_per_step=2, rank_by="entropy").strategy
    assert (topk.tokens_per_step, topk.rank_by) == (2, "entropy")
    assert resolve_config("fast-dllm", "llada", threshold=0.8, forcing="block+global").strategy.threshold == 0.8
    assert resolve_config("ar", "ar", max_new_tokens=8, temperature=0.5, seed=3).seed == 3
    # a part named by its name is switched first (with its defaults), then its settings apply
    assert resolve_config("d3llm", "llada", strategy="topk", tokens_per_step=2).strategy == TopK(tokens_per_step=2)
    assert resolve_config("vanilla", "llada", cache="delayed", cache_delay=0).cache == DelayedCache(cache_delay=0)
    assert resolve_config("d3llm", "llada", strategy="entropy").strategy is PRESETS["d3llm"].strategy  # kept
    assert resolve_config("d3llm", "llada", early_stop=True).early_stop is PRESETS["d3llm"].early_stop


def test_settings_name_the_config_and_its_parts_flat():
    settings = PRESETS["d3llm-cache"].settings()
    assert settings["strategy"] == "entropy" and settings["threshold"] == 0.5 and settings["cache"] == "delayed"
    assert settings["cache_delay"] == 1 and settings["early_stop"] is True and settings["stale_candidates"] is True
    assert set(settings) - {"method"} <= set(setting_types())
    for name, config in PRESETS.items():  # the flat settings rebuild the config
        flat = {k: v for k, v in config.settings().items() if k != "method"}
        assert preset("vanilla").override(method=name, **flat) == config, name


@pytest.mark.parametrize("value", [1e-320, 1e-4, -1.0, float("nan"), float("inf"), 101.0])
def test_temperature_outside_its_range_is_refused(value):
    with pytest.raises(DecodeSettingError, match=r"`temperature` must be 0 \(greedy\) or in \[0.001, 100\]") as error:
        resolve_config("d3llm", "llada", temperature=value)
    assert error.value.setting == "temperature"


@pytest.mark.parametrize("method, family, settings, setting, message", [
    ("d3llm", "llada", {"refresh_interval": 2}, "refresh_interval",
     "`refresh_interval` has no effect with method 'd3llm' (cache none)"),
    ("d3llm", "llada", {"refresh_while_waiting": False}, "refresh_while_waiting",
     "`refresh_while_waiting` has no effect with method 'd3llm' (cache none): it is a setting of cache delayed"),
    ("block", "block", {"future_masks": "skip"}, "future_masks",
     "`future_masks` has no effect with method 'block' (cache block): it is a setting of cache none, prefix, delayed"),
    ("fast-dllm", "llada", {"cache_delay": 2}, "cache_delay",
     "`cache_delay` has no effect with method 'fast-dllm' (cache prefix)"),
    ("vanilla", "llada", {"threshold": 0.3}, "threshold",
     "`threshold` has no effect with method 'vanilla' (strategy topk): it is a setting of strategy confidence, "
     "entropy"),
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
    with pytest.raises(DecodeSettingError, match="`future_masks` must be one of forward, skip, got 'cached'") as error:
        resolve_config("d3llm", "llada", future_masks="cached")  # no cache to read them from
    assert error.value.setting == "future_masks"
    with pytest.raises(DecodeSettingError, match="`refresh_while_waiting` must be true or false, got 'yes'"):
        resolve_config("d3llm-cache", "llada", refresh_while_waiting="yes")
    with pytest.raises(DecodeSettingError,
                       match="`cache` must be one of none, prefix, delayed, block, kv, causal, got 'dual'"):
        resolve_config("d3llm", "llada", cache="dual")


def test_forcing_values_and_family_defaults():
    """`forcing` left open becomes the authors' rule of the model's family (their LLaDA loop adds the
    global best, their Dream loop does not); a named rule wins; other names are errors."""
    assert for_model(resolve_config("d3llm", "llada"), "llada", None).strategy.forcing == "block+global"
    assert for_model(resolve_config("d3llm", "dream"), "dream", None).strategy.forcing == "block"
    assert for_model(resolve_config("d3llm-block", "block"), "block", 8).strategy.forcing == "block"
    assert for_model(resolve_config("d3llm", "llada", forcing="block"), "llada", None).strategy.forcing == "block"
    with pytest.raises(DecodeSettingError, match="`forcing` must be one of block, block[+]global, got 'global'") as error:
        resolve_config("d3llm", "llada", forcing="global")
    assert error.value.setting == "forcing"
    with pytest.raises(DecodeSettingError, match="`stale_candidates` must be true or false, got 1"):
        resolve_config("d3llm", "llada", stale_candidates=1)
