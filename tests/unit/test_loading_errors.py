"""Every loading problem a user can cause is a one-line ModelLoadError naming the cause."""

import json
import shutil

import pytest

from d3llm.errors import ModelLoadError
from d3llm.models import load_model, write_checkpoint
from tests.conftest import toy_model


@pytest.fixture
def folder(tmp_path, tiny_tokenizer):
    model = toy_model("llada", vocab_size=len(tiny_tokenizer))
    path = tmp_path / "model"
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_unknown_name_lists_bundled_models():
    with pytest.raises(ModelLoadError, match="no bundled model or folder named 'nope'"):
        load_model("nope")
    with pytest.raises(ModelLoadError, match="empty"):
        load_model("  ")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path)


def test_truncated_weights(folder):
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors is corrupted or truncated"):
        load_model(folder)


def test_corrupted_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 64 + weights.read_bytes()[64:])
    with pytest.raises(ModelLoadError, match="corrupted or truncated"):
        load_model(folder)


def test_config_that_does_not_match_the_weights(folder):
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"mlp.*has shape .* config says"):
        load_model(folder)
    config["num_hidden_layers"] = 1
    config["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="tensors the config does not define"):
        load_model(folder)


def test_broken_config_json(folder):
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="model_type='bert'"):
        load_model(folder)


def test_missing_shard_and_pickle_only(tmp_path, tiny_tokenizer):
    model = toy_model("llada", vocab_size=len(tiny_tokenizer))
    sharded = write_checkpoint(model.net, tmp_path / "sharded", layout="llada", shards=2)
    tiny_tokenizer.save_pretrained(sharded)
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="shards listed .* are missing"):
        load_model(sharded)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(sharded / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_model(pickled)


def test_unsupported_llada_option(tmp_path, tiny_tokenizer):
    model = toy_model("llada", vocab_size=len(tiny_tokenizer))
    path = write_checkpoint(model.net, tmp_path / "llada", layout="llada")
    config = json.loads((path / "config.json").read_text())
    config["alibi"] = True
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="unsupported LLaDA config: alibi=True"):
        load_model(path)


def test_tokenizer_that_does_not_belong(folder, tmp_path):
    config = json.loads((folder / "config.json").read_text())
    config["mask_token_id"] = 10_000
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="mask token id 10000 is outside"):
        load_model(folder)
    config["mask_token_id"] = 2  # config.json is checked before the tokenizer is read
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="no tokenizer"):
        load_model(folder)


@pytest.mark.parametrize("key, official", [("layer_norm_type", "LayerNorm"), ("block_type", "sequential"),
                                           ("activation_type", "swiglu"), ("rope", "False")])
def test_llada_config_without_a_key_whose_official_default_we_do_not_run(key, official):
    """A key left out takes the official code's default: where that is an architecture we do not
    run, the config is refused by name instead of loaded as something else."""
    from d3llm.models.layouts import llada_config, llada_raw_config

    raw = llada_raw_config(toy_model("llada").config)
    del raw[key]
    with pytest.raises(ModelLoadError, match=rf"no `{key}`: the official code then uses .*{official}"):
        llada_config(raw)


def test_llada_config_follows_the_official_defaults_we_run():
    from d3llm.models.layouts import llada_config, llada_raw_config

    raw = llada_raw_config(toy_model("llada").config)
    del raw["weight_tying"], raw["max_sequence_length"]
    config = llada_config(raw)
    assert config.tie_word_embeddings is True and config.max_position_embeddings == 1024
