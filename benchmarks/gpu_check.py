"""The GPU check: 8B-shaped random checkpoints (LLaDA-8B, Dream-7B, and a Qwen2.5-7B-shaped AR
model) built, loaded with `load_model` and timed on one CUDA GPU, no network. Run by
benchmarks/gpu_check.sh; prints a Markdown table for docs/benchmarks.md.

Per model: load seconds, peak GPU memory, seconds per forward by width (1, 32, 64 new columns
after a 256-token KV-cache prefix, and a full 512-column forward), KV bytes per token, and
tokens/s projected for `ar` (one token per cached 1-column forward) and for `d3llm-cache` at the
TPF the bundled student measured (`--tpf`, default: results/current/tiny-d3llm-arith-d3llm.json):
random weights commit about one token per forward, so the real decoders run only a few steps as
a smoke check and the speed of a trained model is projected from the forward cost:

    d3llm-cache tokens/s ~= TPF / (seconds of a W-column cached forward), W = 32 and 64

(with `future_masks=skip` a delayed-cache step forwards its active blocks, 32-64 columns;
with the default, the rest of the canvas: docs/method.md section 4, docs/benchmarks.md).
A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from real_size import build  # this folder: the script's own path comes first

ROOT = Path(__file__).resolve().parents[1]


def cached_forward_seconds(model, prefix: int, width: int, repeats: int = 5) -> float:
    """Seconds of one forward of `width` new columns after a `prefix`-token KV cache."""
    device = model.device
    with torch.no_grad():
        cache = model(torch.randint(5, 1000, (1, prefix), device=device), use_cache=True).past_key_values
        ids = torch.randint(5, 1000, (1, width), device=device)
        times = []
        for _ in range(repeats + 1):
            torch.cuda.synchronize()
            started = time.perf_counter()
            model(ids, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
            cache.crop(prefix - cache.get_seq_length())  # back to the prefix (crop takes a negative count)
    return min(times[1:])


def full_forward_seconds(model, width: int, repeats: int = 3) -> float:
    ids = torch.randint(5, 1000, (1, width), device=model.device)
    with torch.no_grad():
        model(ids)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            model(ids)
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def smoke_decode(lm, method: str, tokens: int = 8) -> dict:
    from d3llm.decode import generate, preset
    from d3llm.models.tokenizer import prompt_ids

    prompt = prompt_ids(lm.tokenizer, " ".join(f"w{i}" for i in range(100, 132)))
    config = preset(method, max_new_tokens=tokens) if method == "ar" else preset(method, max_new_tokens=tokens,
                                                                                   block_size=tokens)
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = generate(lm.model, [prompt], config, lm.tokenizer.pad_token_id)
    torch.cuda.synchronize()
    return {"method": method, "nfe": out.nfe, "tokens": tokens, "seconds": time.perf_counter() - started}


def check(shape: str, work: Path, tpf: float) -> dict:
    from d3llm.models import load_model

    folder = work / f"{shape}-random"
    started = time.perf_counter()
    weights = build(folder, shape, device="cuda")
    built = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    lm = load_model(folder, device="cuda", dtype="bfloat16")
    torch.cuda.synchronize()
    row = {"shape": shape, "family": lm.facts.family, "weights_bytes": weights, "build_s": built,
           "load_s": time.perf_counter() - started}
    row["cached_s"] = {w: cached_forward_seconds(lm.model, 256, w) for w in (1, 32, 64)}
    row["full_512_s"] = full_forward_seconds(lm.model, 512)
    with torch.no_grad():
        cache = lm.model(torch.randint(5, 1000, (1, 64), device=lm.model.device), use_cache=True).past_key_values
    row["kv_bytes_per_token"] = sum(t.numel() * t.element_size() for layer in cache.layers
                                    for t in (layer.keys, layer.values)) / cache.get_seq_length()
    if lm.facts.family == "ar":
        row["tokens_per_s"] = {"ar": 1 / row["cached_s"][1]}
        row["smoke"] = [smoke_decode(lm, "ar")]
    else:
        row["tokens_per_s"] = {f"d3llm-cache at TPF {tpf:.2f}, {w} col": tpf / row["cached_s"][w] for w in (32, 64)}
        row["smoke"] = [smoke_decode(lm, m) for m in ("d3llm", "d3llm-cache")]
    row["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    del lm
    torch.cuda.empty_cache()
    shutil.rmtree(folder)
    return row


def table(rows: list[dict], card: str) -> str:
    gib = 2**30
    out = [f"{card}, bf16, batch 1; cached forwards after a 256-token prefix", "",
           "| model | load s | peak GPU GiB | s/fwd 1 col | 32 col | 64 col | 512 full | KV KiB/token | tokens/s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cached_s"]
        speed = "; ".join(f"{k} {v:.1f}" for k, v in r["tokens_per_s"].items())
        out.append(f"| {r['shape']} ({r['family']}) | {r['load_s']:.1f} | {r['peak_gpu_bytes'] / gib:.1f} | "
                   f"{c[1] * 1e3:.1f} ms | {c[32] * 1e3:.1f} ms | {c[64] * 1e3:.1f} ms | {r['full_512_s'] * 1e3:.1f} ms | "
                   f"{r['kv_bytes_per_token'] / 1024:.0f} | {speed} |")
    return "\n".join(out)


def bundled_tpf() -> float:
    """The bundled student's measured TPF (arith, d3llm preset; README "Distillation")."""
    record = ROOT / "results" / "current" / "tiny-d3llm-arith-d3llm.json"
    return float(json.loads(record.read_text())["tokens_per_forward"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder for the checkpoints (16 GB at a time)")
    parser.add_argument("--shapes", default="llada,dream,qwen2-ar")
    parser.add_argument("--tpf", type=float, default=None, help="TPF for the projection (default: the bundled student's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU here; this check runs on a GPU machine (benchmarks/gpu_check.sh)")
    tpf = args.tpf or bundled_tpf()
    card = torch.cuda.get_device_name(0)
    rows = []
    for shape in args.shapes.split(","):
        rows.append(check(shape, args.work, tpf))
        print(table(rows, card), flush=True)  # a partial table survives a timeout
    if args.json:
        args.json.write_text(json.dumps({"card": card, "tpf": tpf, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
