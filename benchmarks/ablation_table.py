"""Print a Markdown ablation table from `d3llm eval --json` result files.

    python benchmarks/ablation_table.py "d3LLM (full)=results/current/tiny-d3llm-arith-d3llm.json" \
        "random masks=results/archive/2026-11-23-ablation/random-masks-d3llm.json" ...

Each argument is LABEL=FILE; the row shows the file's model, method, the decode settings that
differ from the method's preset, accuracy, TPF and n, so every number traces to its run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from d3llm.decode import preset
from d3llm.decode.config import DEFAULT_BLOCK_SIZE


def changed_settings(record: dict) -> str:
    base = preset(record["method"]).settings()
    if base["block_size"] is None:  # the preset takes the model's; a record holds the one decoded with
        base["block_size"] = DEFAULT_BLOCK_SIZE
    diff = {k: v for k, v in record["decode_config"].items() if base.get(k) != v and k != "max_new_tokens"}
    return ", ".join(f"{k}={v}" for k, v in sorted(diff.items())) or "-"


def main(args: list[str]) -> None:
    print("| variant | model | method | settings | accuracy % | TPF | n |")
    print("|---|---|---|---|---|---|---|")
    for arg in args:
        label, _, file = arg.rpartition("=")
        r = json.loads(Path(file).read_text())
        print(f"| {label} | {Path(r['model']).name} | {r['method']} | {changed_settings(r)} | "
              f"{r['accuracy_pct']:.1f} | {r['tokens_per_forward']:.2f} | {r['n']} |")


if __name__ == "__main__":
    main(sys.argv[1:])
