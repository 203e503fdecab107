"""Decode outputs of every preset on every bundled model, to compare two versions of the code.

    python benchmarks/preset_snapshot.py /tmp/after.json
    PYTHONPATH=/path/to/old/checkout/src python benchmarks/preset_snapshot.py /tmp/before.json
    python benchmarks/preset_snapshot.py --compare /tmp/before.json /tmp/after.json

For each bundled model, each preset that decodes it (a block model also with `vanilla` and
`d3llm` uncached: refused, and the refusal is recorded) and the tasks arith and code: three
validation problems decoded together and each alone, float32; the record holds the answers'
token ids, the NFE and each row's forwards (an error's message where a preset is refused).
A refactor of decode/ must leave the file unchanged. Not a test: it takes minutes.
"""

from __future__ import annotations

import json
import sys

import torch

from d3llm.decode import generate, preset
from d3llm.decode.config import methods_for
from d3llm.errors import D3llmError
from d3llm.models import bundled_models, load_model
from d3llm.models.tokenizer import prompt_ids
from d3llm.tasks import get_task


def decode_case(lm, prompts: list[list[int]], method: str) -> dict | str:
    pad = lm.tokenizer.pad_token_id
    try:
        config = preset(method, max_new_tokens=48, **({"cache": "none"} if method not in methods_for(
            lm.facts.family) else {}))
        batch = generate(lm.model, prompts, config, pad)
    except D3llmError as exc:
        return str(exc)
    alone = [generate(lm.model, [p], config, pad) for p in prompts]
    return {"batch": batch.sequences, "nfe": batch.nfe, "rows": batch.row_forwards,
            "alone": [a.sequences[0] for a in alone], "alone_nfe": [a.nfe for a in alone]}


def snapshot() -> dict:
    out = {}
    for name in bundled_models():
        lm = load_model(name, dtype="float32")
        methods = list(methods_for(lm.facts.family)) + (["vanilla", "d3llm"] if lm.facts.family == "block" else [])
        for task in ("arith", "code"):
            prompts = [prompt_ids(lm.tokenizer, p.prompt) for p in get_task(task).problems("validation", 3, seed=1)]
            for method in methods:
                out[f"{name}/{task}/{method}"] = decode_case(lm, prompts, method)
    return out


def main(args: list[str]) -> None:
    torch.set_num_threads(1)
    if args[:1] == ["--compare"]:
        before, after = (json.loads(open(f).read()) for f in args[1:3])
        differ = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        print(f"{len(before)} cases before, {len(after)} after; {len(differ)} differ" +
              "".join(f"\n  {k}" for k in differ))
        sys.exit(1 if differ else 0)
    with open(args[0], "w") as f:
        json.dump(snapshot(), f)


if __name__ == "__main__":
    main(sys.argv[1:])
