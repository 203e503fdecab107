"""Official LLaDA / Dream layouts: written in their format, loaded back into our classes."""

import json

import pytest
import torch

from d3llm.errors import D3llmError, ModelLoadError
from d3llm.models import load_model, write_checkpoint
from tests.conftest import save_toy_model, toy_model


def _with_tokenizer(folder, tokenizer):
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def llada_folder(tmp_path, tiny_tokenizer):
    model = toy_model("llada", vocab_size=len(tiny_tokenizer))
    model.net.config.mask_token_id = tiny_tokenizer.mask_token_id
    folder = write_checkpoint(model.net, tmp_path / "llada", layout="llada", shards=3, dtype=torch.bfloat16)
    return model, _with_tokenizer(folder, tiny_tokenizer)


def test_llada_layout_uses_official_names_and_config(llada_folder):
    _, folder = llada_folder
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == "llada" and raw["architectures"] == ["LLaDAModelLM"]
    assert {"d_model", "n_heads", "n_kv_heads", "n_layers", "mlp_hidden_size", "embedding_size"} <= set(raw)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    names = set(index["weight_map"])
    assert {"model.transformer.wte.weight", "model.transformer.ff_out.weight",
            "model.transformer.ln_f.weight", "model.transformer.blocks.1.attn_out.weight",
            "model.transformer.blocks.0.ff_proj.weight", "model.transformer.blocks.0.ff_out.weight"} <= names
    assert len(set(index["weight_map"].values())) == 3
    assert index["metadata"]["total_size"] > 0


def test_llada_layout_loads_with_the_same_logits(llada_folder):
    model, folder = llada_folder
    lm = load_model(folder, dtype=torch.float32)
    assert lm.facts.family == "llada" and lm.facts.logit_shift == 0
    assert lm.facts.mask_token_id == lm.tokenizer.mask_token_id
    x = torch.randint(3, 60, (2, 9))
    # the file holds bf16 weights: compare with the source model rounded the same way
    reference = model.net.to(torch.bfloat16).to(torch.float32)(x).logits
    torch.testing.assert_close(lm.model(x).logits, reference, atol=1e-4, rtol=1e-4)
    assert not lm.model.config.is_causal


def test_dream_layout_loads_with_the_same_logits(tmp_path, tiny_tokenizer):
    model = toy_model("dream", vocab_size=len(tiny_tokenizer))
    model.net.config.mask_token_id = tiny_tokenizer.mask_token_id
    folder = write_checkpoint(model.net, tmp_path / "dream", layout="dream", shards=2)
    raw = json.loads((folder / "config.json").read_text())
    assert raw["model_type"] == "Dream" and raw["architectures"] == ["DreamModel"]
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.self_attn.q_proj.bias" in weight_map and "lm_head.weight" in weight_map
    # Dream ships a Qwen2 BPE as vocab.json + merges.txt (no tokenizer.json)
    tiny_tokenizer.backend_tokenizer.model.save(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        # as in Dream's own file: a remote-code class that we must not (and need not) run
        "tokenizer_class": "DreamTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "eos_token": "<|eos|>", "pad_token": "<|pad|>", "mask_token": "<|mask|>",
        "added_tokens_decoder": {str(i): {"content": t, "special": True}
                                 for i, t in enumerate(["<|pad|>", "<|eos|>", "<|mask|>"])},
    }))
    lm = load_model(folder)
    assert lm.facts.family == "dream" and lm.facts.logit_shift == 1
    assert lm.tokenizer.convert_tokens_to_ids("<|mask|>") == lm.facts.mask_token_id
    x = torch.randint(3, 60, (2, 9))
    torch.testing.assert_close(lm.model(x).logits, model(x).logits)


def test_our_folders_round_trip_for_every_family(tmp_path, tiny_tokenizer):
    for family in ("llada", "dream", "ar"):
        model = toy_model(family, vocab_size=len(tiny_tokenizer))
        folder = tmp_path / family
        model.save_pretrained(folder)
        tiny_tokenizer.save_pretrained(folder)
        lm = load_model(folder)
        assert lm.facts == model.facts
        x = torch.randint(3, 60, (1, 7))
        torch.testing.assert_close(lm.model(x).logits, model(x).logits)


def test_export_to_half_precision_and_official_layout(tmp_path, tiny_tokenizer):
    from d3llm.models.checkpoint import export_model

    model = toy_model("llada", vocab_size=len(tiny_tokenizer))
    source = tmp_path / "source"
    model.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    (source / "provenance.json").write_text('{"seed": 0}')
    half = export_model(source, tmp_path / "half", dtype=torch.float16)
    assert (half / "provenance.json").read_text() == '{"seed": 0}'
    lm = load_model(half)  # small half-precision models compute in float32 on the CPU
    assert lm.model.dtype == torch.float32
    x = torch.randint(3, 60, (1, 7))
    torch.testing.assert_close(lm.model(x).logits, model(x).logits, atol=2e-2, rtol=2e-2)
    official = export_model(half, tmp_path / "official", layout="llada", shards=2)
    assert json.loads((official / "config.json").read_text())["model_type"] == "llada"
    torch.testing.assert_close(load_model(official).model(x).logits, lm.model(x).logits)


@pytest.mark.parametrize("family", ["llada", "dream", "block"])
def test_int8_export_halves_the_weights_and_predicts_like_the_source(tmp_path, tiny_tokenizer, family):
    from d3llm.models.catalog import parameters_from_weights
    from d3llm.models.checkpoint import INT8_SCALE, export_model
    from d3llm.models.reading import read_tensors

    model = toy_model(family, vocab_size=len(tiny_tokenizer), **({"block_size": 4} if family == "block" else {}))
    model.net.config.mask_token_id = tiny_tokenizer.mask_token_id
    source = tmp_path / "source"
    model.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    half = export_model(source, tmp_path / "half", dtype=torch.float16)
    small = export_model(source, tmp_path / "int8", dtype=torch.int8)
    size = {f: (f / "model.safetensors").stat().st_size for f in (half, small)}
    assert size[small] < 0.7 * size[half]  # matrices in one byte, their row scales and vectors in two
    stored = read_tensors(small)  # as loaded: floats, no scale tensors left
    assert not any(k.endswith(INT8_SCALE) for k in stored) and all(t.is_floating_point() for t in stored.values())
    assert json.loads((small / "config.json").read_text())["dtype"] == "float16"
    assert parameters_from_weights(small) == parameters_from_weights(half)  # `d3llm models` counts no scales
    lm = load_model(small)
    x = torch.randint(3, 60, (4, 24))
    kwargs = {"block_start": 8} if family == "block" else {}
    ours, theirs = lm.model(x, **kwargs).logits, model(x, **kwargs).logits
    # one step of 1/127 of each row's largest weight: logits (of ~+-10) move by hundredths, and
    # the proposal changes only where two tokens nearly tie
    assert (ours - theirs).abs().max() < 0.2
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean() > 0.95


def test_int8_storage_is_refused_in_official_layouts_and_checked_at_load(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file, save_file

    from d3llm.models.checkpoint import INT8_SCALE, export_model

    model = toy_model("llada", vocab_size=len(tiny_tokenizer))
    source = tmp_path / "source"
    model.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    with pytest.raises(D3llmError, match="int8 storage is ours: the hf layout holds it, the official llada"):
        export_model(source, tmp_path / "official", layout="llada", dtype=torch.int8)
    assert not (tmp_path / "official").exists()
    folder = export_model(source, tmp_path / "int8", dtype=torch.int8)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith(INT8_SCALE))[: -len(INT8_SCALE)]
    save_file({k: v for k, v in tensors.items() if k != name + INT8_SCALE}, weights)
    with pytest.raises(ModelLoadError, match=f"int8 tensor\\(s\\) without a row scale \\({name}"):
        load_model(folder)
    save_file({**tensors, name: tensors[name][:-1]}, weights)
    with pytest.raises(ModelLoadError, match=f"is the row scale of an int8 matrix {name}, which holds int8"):
        load_model(folder)


@pytest.mark.parametrize("family, method", [("llada", "d3llm-cache"), ("dream", "d3llm-cache"), ("dream", "fast-dllm-dual")])
def test_models_from_official_layouts_decode_like_their_source(tmp_path, tiny_tokenizer, family, method):
    from d3llm.decode import generate, preset

    model = toy_model(family, vocab_size=len(tiny_tokenizer))
    model.net.config.mask_token_id = tiny_tokenizer.mask_token_id
    folder = write_checkpoint(model.net, tmp_path / family, layout=family, shards=2)
    tiny_tokenizer.save_pretrained(folder)
    lm = load_model(folder)
    prompts = [[5, 6, 7, 8], [9, 10]]
    config = preset(method, max_new_tokens=16, block_size=8, threshold=0.9 if method.startswith("fast") else 1.5)
    ours = generate(lm.model, prompts, config, tiny_tokenizer.pad_token_id)
    source = generate(model, prompts, config, tiny_tokenizer.pad_token_id)
    assert ours.sequences == source.sequences and torch.equal(ours.trace, source.trace)


def test_an_exported_decode_block_size_is_the_model_s_default_and_a_given_one_wins(tmp_path, tiny_tokenizer):
    from d3llm.decode import generate, preset
    from d3llm.eval.runner import evaluate
    from d3llm.models.checkpoint import export_model
    from d3llm.tasks import get_task

    source = save_toy_model(tmp_path / "source", tiny_tokenizer, "llada")
    exported = export_model(source, tmp_path / "b8", decode_block_size=8)
    assert json.loads((exported / "config.json").read_text())["d3llm_decode_block_size"] == 8
    lm, original = load_model(exported), load_model(source)
    assert lm.facts.decode_block_size == 8 and original.facts.decode_block_size is None
    prompts, pad = [[5, 6, 7, 8], [9, 10]], tiny_tokenizer.pad_token_id

    def tokens(model, **settings):
        out = generate(model.model, prompts, preset("vanilla", max_new_tokens=24, **settings), pad)
        return out.sequences, out.trace.tolist()

    assert tokens(lm) == tokens(original, block_size=8) != tokens(original)  # the default is 8, not 32
    assert tokens(lm, block_size=32) == tokens(original)  # a block size the user gives wins
    result = evaluate(lm, get_task("arith"), preset("vanilla", max_new_tokens=24), n=2, seed=0)
    assert result.decode_config["block_size"] == 8  # the record names the block size decoded with
    assert evaluate(original, get_task("arith"), preset("vanilla", max_new_tokens=24), n=2,
                    seed=0).decode_config["block_size"] == 32


def test_a_decode_block_size_belongs_to_llada_and_dream_models_in_our_layout(tmp_path, tiny_tokenizer):
    from d3llm.models.checkpoint import export_model

    llada = save_toy_model(tmp_path / "llada", tiny_tokenizer, "llada")
    block = save_toy_model(tmp_path / "block", tiny_tokenizer, "block", block_size=4)
    with pytest.raises(D3llmError, match="not a block model's"):
        export_model(block, tmp_path / "out", decode_block_size=8)
    with pytest.raises(D3llmError, match="hf layout only"):
        export_model(llada, tmp_path / "out", layout="llada", decode_block_size=8)
    with pytest.raises(D3llmError, match="positive integer"):
        export_model(llada, tmp_path / "out", decode_block_size=0)
    assert not (tmp_path / "out").exists()
    config = json.loads((llada / "config.json").read_text())
    (llada / "config.json").write_text(json.dumps({**config, "d3llm_decode_block_size": "8"}))
    with pytest.raises(ModelLoadError, match="d3llm_decode_block_size"):
        load_model(llada)
