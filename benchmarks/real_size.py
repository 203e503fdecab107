"""A run at real size on a CPU: a random-weight checkpoint shaped exactly like LLaDA-8B-Instruct
(or Dream-v0-7B) in the official layout, loaded with `load_model` and decoded with `d3llm` and
`d3llm-cache`. Prints a Markdown table (docs/benchmarks.md's source) and writes JSON beside it.

    OMP_NUM_THREADS=1 python benchmarks/real_size.py --shape llada --dir /tmp/real-size --delete

Phases: `build` writes config.json (the official keys), a tokenizer with the official special
ids (a synthetic word-level vocabulary of the same size: no download), and the bf16 shards one
at a time (6 for LLaDA, 4 for Dream, as theirs; a shard is generated, written, freed, so the
process never holds more than one shard); `measure` runs in a fresh process so that its peak
resident memory (VmHWM) is the load's and the decode's, not the build's. Measured: peak RSS
against the weights' bytes (the goal is <= 1.15x), load seconds, seconds per forward at 1/32/64
columns, KV-cache bytes per token (from the cache after a prefill), and the decodes' NFE and
seconds. Random weights commit about one token per forward: the decode rows measure cost, not
the speed-up of a trained model. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

# The official shapes (docs/checkpoint-layouts.md sections 1.2-1.4 and 2.2-2.3).
SHAPES = {
    "llada": dict(vocab=126464, hidden=4096, layers=32, heads=32, kv_heads=32, mlp=12288, shards=6,
                  mask=126336, eos=126081, bos=126080),
    "dream": dict(vocab=152064, hidden=3584, layers=28, heads=28, kv_heads=4, mlp=18944, shards=4,
                  mask=151666, eos=151643, bos=151643),
    # Qwen2.5-7B-Instruct: Dream's network (Dream was initialised from it), causal, no mask token
    "qwen2-ar": dict(vocab=152064, hidden=3584, layers=28, heads=28, kv_heads=4, mlp=18944, shards=4,
                     mask=151666, eos=151645, bos=151643),
}


def llada_config(s: dict) -> dict:
    """The official LLaDA-8B-Instruct config.json (all 46 keys, docs/checkpoint-layouts.md 1.2)."""
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModelForCausalLM":
                     "modeling_llada.LLaDAModelLM", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": s["hidden"],
        "embedding_dropout": 0.0, "embedding_size": s["vocab"], "eos_token_id": s["eos"], "flash_attention": False,
        "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
        "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "mask_token_id": s["mask"], "max_sequence_length": 4096,
        "mlp_hidden_size": s["mlp"], "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
        "n_heads": s["heads"], "n_kv_heads": s["kv_heads"], "n_layers": s["layers"], "pad_token_id": s["eos"],
        "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True,
        "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "transformers_version": "4.46.3",
        "use_cache": False, "vocab_size": s["vocab"], "weight_tying": False,
    }


def dream_config(s: dict) -> dict:
    """The Dream-v0-7B config.json (docs/checkpoint-layouts.md 2.2)."""
    return {
        "architectures": ["DreamModel"], "auto_map": {"AutoConfig": "configuration_dream.DreamConfig",
                                                      "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream", "hidden_size": s["hidden"], "intermediate_size": s["mlp"],
        "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"],
        "hidden_act": "silu", "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "rope_scaling": None, "use_sliding_window": False, "sliding_window": None, "max_window_layers": 28,
        "attention_dropout": 0.0, "initializer_range": 0.02, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_cache": False, "use_mrope": False, "vocab_size": s["vocab"], "bos_token_id": s["bos"],
        "eos_token_id": s["eos"], "pad_token_id": s["eos"], "mask_token_id": s["mask"],
    }


def qwen2_config(s: dict) -> dict:
    """A Qwen2.5-7B-Instruct-shaped config.json (transformers' own `qwen2` layout: an AR model)."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": s["hidden"],
        "intermediate_size": s["mlp"], "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"], "hidden_act": "silu", "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "use_sliding_window": False, "vocab_size": s["vocab"], "bos_token_id": s["bos"], "eos_token_id": s["eos"],
    }


CONFIGS = {"llada": llada_config, "dream": dream_config, "qwen2-ar": qwen2_config}


def tensor_shapes(shape: str) -> list[tuple[str, list[int]]]:
    """(name, shape) of every tensor, in the official names (Dream's are Qwen2's)."""
    s = SHAPES[shape]
    h, m, v, kv = s["hidden"], s["mlp"], s["vocab"], s["kv_heads"] * (s["hidden"] // s["heads"])
    if shape == "llada":
        out = [("model.transformer.wte.weight", [v, h])]
        for n in range(s["layers"]):
            p = f"model.transformer.blocks.{n}."
            out += [(p + "attn_norm.weight", [h]), (p + "q_proj.weight", [h, h]), (p + "k_proj.weight", [kv, h]),
                    (p + "v_proj.weight", [kv, h]), (p + "attn_out.weight", [h, h]), (p + "ff_norm.weight", [h]),
                    (p + "ff_proj.weight", [m, h]), (p + "up_proj.weight", [m, h]), (p + "ff_out.weight", [h, m])]
        return out + [("model.transformer.ln_f.weight", [h]), ("model.transformer.ff_out.weight", [v, h])]
    out = [("model.embed_tokens.weight", [v, h])]
    for n in range(s["layers"]):
        p = f"model.layers.{n}."
        out += [(p + "input_layernorm.weight", [h]), (p + "self_attn.q_proj.weight", [h, h]),
                (p + "self_attn.q_proj.bias", [h]), (p + "self_attn.k_proj.weight", [kv, h]),
                (p + "self_attn.k_proj.bias", [kv]), (p + "self_attn.v_proj.weight", [kv, h]),
                (p + "self_attn.v_proj.bias", [kv]), (p + "self_attn.o_proj.weight", [h, h]),
                (p + "post_attention_layernorm.weight", [h]), (p + "mlp.gate_proj.weight", [m, h]),
                (p + "mlp.up_proj.weight", [m, h]), (p + "mlp.down_proj.weight", [h, m])]
    return out + [("model.norm.weight", [h]), ("lm_head.weight", [v, h])]


def write_tokenizer(folder: Path, shape: str) -> None:
    """A word-level tokenizer with one id per embedding row below the official vocabulary's end
    and the official special ids (eos, mask, bos), with a minimal chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    s = SHAPES[shape]
    size = s["mask"] + 1 if shape != "llada" else s["vocab"]  # Dream's tokenizer ends at its mask id
    names = {s["eos"]: "<|eot|>", s["mask"]: "<|mask|>", s["bos"]: "<|bos|>", 0: "<unk>"}
    vocab = {names.get(i, f"w{i}"): i for i in range(size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|eot|>", pad_token="<|eot|>",
                                   mask_token="<|mask|>", bos_token="<|bos|>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}w7 {% endif %}")
    fast.save_pretrained(folder)


def build(folder: Path, shape: str, seed: int = 0, device: str = "cpu") -> int:
    """Write the checkpoint shard by shard; returns the weights' bytes. `device`: where the
    random numbers are drawn (a GPU draws 8B of them in seconds; the CPU takes minutes)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = CONFIGS[shape](SHAPES[shape])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_tokenizer(folder, shape)
    tensors, shards = tensor_shapes(shape), SHAPES[shape]["shards"]
    total = sum(2 * math.prod(t) for _, t in tensors)
    per_shard, groups, size = total / shards, [[]], 0
    for name, t in tensors:  # consecutive tensors, about total/shards bytes each
        if size >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append((name, t))
        size += 2 * math.prod(t)
    weight_map, generator = {}, torch.Generator(device).manual_seed(seed)
    for k, group in enumerate(groups, 1):
        file = f"model-{k:05d}-of-{len(groups):05d}.safetensors"
        shard = {}
        for name, t in group:
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                shard[name] = torch.ones(t, dtype=torch.bfloat16)
            else:  # 0.02: the official init_std; bf16 filled in place, no float32 copy
                shard[name] = torch.empty(t, dtype=torch.bfloat16, device=device).normal_(
                    0.0, 0.02, generator=generator).cpu()
            weight_map[name] = file
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        del shard
        print(f"  wrote {file}", file=sys.stderr, flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def seconds_per_forward(model, width: int, repeats: int) -> float:
    ids = torch.randint(5, 1000, (1, width))
    with torch.no_grad():
        model(ids)  # warm-up
        started = time.perf_counter()
        for _ in range(repeats):
            model(ids)
    return (time.perf_counter() - started) / repeats


def kv_bytes_per_token(model, tokens: int = 16) -> float:
    with torch.no_grad():
        cache = model(torch.randint(5, 1000, (1, tokens)), use_cache=True).past_key_values
    held = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    return held / cache.get_seq_length()


def measure(folder: Path, columns: list[int], repeats: int, new_tokens: int) -> dict:
    from d3llm.decode import generate, preset
    from d3llm.models import load_model
    from d3llm.models.tokenizer import prompt_ids

    weights = json.loads((folder / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    for shard in folder.glob("*.safetensors"):  # out of the page cache (this file's pages only): a cold load
        fd = os.open(shard, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    started = time.perf_counter()
    lm = load_model(folder, device="cpu", dtype="bfloat16")
    result = {"weights_bytes": weights, "load_s": time.perf_counter() - started,
              "rss_after_load_bytes": _status_kib("VmRSS") * 1024, "threads": torch.get_num_threads(),
              "parameters": lm.model.num_parameters(), "family": lm.facts.family}
    started = time.perf_counter()
    with torch.no_grad():  # the weights are memory-mapped: the first forward reads them from disk
        lm.model(torch.randint(5, 1000, (1, 1)))
    result["first_forward_s"] = time.perf_counter() - started
    result["s_per_forward"] = {w: seconds_per_forward(lm.model, w, repeats) for w in columns}
    result["kv_bytes_per_token"] = kv_bytes_per_token(lm.model)
    prompt = prompt_ids(lm.tokenizer, " ".join(f"w{i}" for i in range(100, 116)))
    result["decode"] = {}
    for method in ("d3llm", "d3llm-cache") if lm.facts.family != "ar" else ("ar",):
        sizes = {} if method == "ar" else {"block_size": new_tokens}
        config = preset(method, max_new_tokens=new_tokens, **sizes)
        started = time.perf_counter()
        out = generate(lm.model, [prompt], config, lm.tokenizer.pad_token_id)
        result["decode"][method] = {"seconds": time.perf_counter() - started, "nfe": out.nfe,
                                    "tokens": new_tokens, "prompt_tokens": len(prompt)}
    result["peak_rss_bytes"] = _status_kib("VmHWM") * 1024
    return result


def table(r: dict, shape: str) -> str:
    gib = 2**30
    rows = [f"{shape}-shaped random weights, {r['parameters'] / 1e9:.2f}B parameters, bf16, "
            f"{r['threads']} torch thread(s)", "", "| measure | value |", "|---|---|",
            f"| weights (bf16) | {r['weights_bytes'] / gib:.2f} GiB |",
            f"| peak RSS (VmHWM) | {r['peak_rss_bytes'] / gib:.2f} GiB = {r['peak_rss_bytes'] / r['weights_bytes']:.3f}x weights |",
            f"| RSS after load | {r['rss_after_load_bytes'] / gib:.2f} GiB |",
            f"| load_model (weights memory-mapped, read on use) | {r['load_s']:.1f} s |",
            f"| first forward, 1 column (reads the weights from disk, page cache dropped) | {r['first_forward_s']:.1f} s |"]
    rows += [f"| one forward, {w} column(s) | {s:.2f} s |" for w, s in r["s_per_forward"].items()]
    rows.append(f"| KV cache per token | {r['kv_bytes_per_token'] / 1024:.0f} KiB |")
    for method, d in r["decode"].items():
        rows.append(f"| `{method}`: {d['tokens']} tokens after a {d['prompt_tokens']}-token prompt | "
                    f"{d['nfe']} forwards, {d['seconds']:.1f} s |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llada")
    parser.add_argument("--dir", type=Path, required=True, help="where the checkpoint is written (a new folder)")
    parser.add_argument("--phase", choices=("all", "build", "measure"), default="all")
    parser.add_argument("--columns", default="1,32,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--delete", action="store_true", help="remove the checkpoint at the end")
    parser.add_argument("--json", type=Path, default=None, help="also write the measures here")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers than the official (a quick check)")
    args = parser.parse_args()
    if args.layers:
        SHAPES[args.shape]["layers"] = args.layers
    columns = [int(c) for c in args.columns.split(",")]
    folder = args.dir / f"{args.shape}-random"
    if args.phase in ("all", "build"):
        if folder.exists():
            parser.error(f"{folder} exists; give another --dir (nothing is overwritten)")
        started = time.perf_counter()
        total = build(folder, args.shape)
        print(f"built {total / 2**30:.2f} GiB in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.phase == "all":  # a fresh process: its peak memory is the load's, not the build's
        command = [sys.executable, __file__, "--shape", args.shape, "--dir", str(args.dir), "--phase", "measure",
                   "--columns", args.columns, "--repeats", str(args.repeats), "--new-tokens", str(args.new_tokens)]
        command += ["--layers", str(args.layers)] if args.layers else []
        if args.json:
            command += ["--json", str(args.json)]
        code = subprocess.call(command)
        if args.delete:
            shutil.rmtree(folder)
        sys.exit(code)
    if args.phase == "measure":
        result = measure(folder, columns, args.repeats, args.new_tokens)
        print(table(result, args.shape))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
