"""Milliseconds of one model forward in float32 and bfloat16 on this machine, by the number of
columns forwarded: where bf16 pays. Prints a Markdown table (docs/platform-notes.md's source).

    python benchmarks/dtype_speed.py --model tiny-d3llm --columns 1,8,16,32,64,128 --threads 1

On a CPU with bf16 matrix instructions (AVX512-BF16, AMX) a bf16 matmul is cheaper per row than
fp32 once a forward holds more than a few rows; for one row (an AR step) the casts cost more
than the matmul saves. So the fastest dtype of a decoder depends on how many columns its
forwards hold: compare decoders each in its own fastest dtype (benchmarks/decode_presets.py
takes `--model NAME@bfloat16`). A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse

import torch

from d3llm.errors import D3llmError
from d3llm.models import load_model
from decode_presets import forward_rows_per_second  # this folder: the script's own path comes first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-d3llm")
    parser.add_argument("--columns", default="1,8,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        columns = [int(c) for c in args.columns.split(",")]
    except ValueError:
        parser.error(f"--columns must be comma-separated integers, got {args.columns!r}")
    if not columns or min(columns) < 1:
        parser.error(f"--columns must be positive, got {args.columns!r}")
    try:
        models = {dtype: load_model(args.model, dtype=dtype).model for dtype in ("float32", "bfloat16")}
    except D3llmError as exc:
        parser.error(f"--model {args.model}: {exc}")
    print(f"{args.model}, batch 1, torch threads {torch.get_num_threads()}, {args.repeats} forwards each\n")
    print("| columns | float32 ms | bfloat16 ms | bf16 / fp32 |")
    print("|---|---|---|---|")
    for n in columns:
        fp32, bf16 = (1000 / forward_rows_per_second(models[d], n, 1, args.repeats) for d in ("float32", "bfloat16"))
        print(f"| {n} | {fp32:.2f} | {bf16:.2f} | {bf16 / fp32:.2f} |", flush=True)


if __name__ == "__main__":
    main()
