"""Run the authors' decoders on our models and store what they produced: the fixtures of
tests/equivalence/test_official_decoders.py.

Not a test, and not part of the package: it needs the authors' code, which this repository does
not hold. Give it their checkouts (plain clones at the commits named in fixtures.json):

    git clone https://github.com/hao-ai-lab/d3LLM /tmp/official            # e5bfcac
    git clone https://github.com/NVlabs/Fast-dLLM /tmp/official/fast-dllm  # 24cc59e
    python tests/equivalence/official/make_fixtures.py --d3llm /tmp/official \
        --fast-dllm /tmp/official/fast-dllm --out tests/equivalence/official/fixtures.json

Their functions are imported from their files as they are; the modelling code they import at
module level is stubbed (their decoders only call `model(x)`), and our models are handed to them
through thin adapters that count real forwards (`Counting`). What is stored per case: the model,
the official function and its arguments, the prompt ids, the response the function returned
(every column after the prompt), its own `nfe` counter, the model calls it really made, and how
many of those committed nothing (`idle`: Fast-dLLM's cached loops forward a block once more after
the forward that completed it; our loop does not, docs/method.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
from transformers import DynamicCache

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
torch.set_num_threads(1)

from tests.equivalence.official.cases import CASES, FAST_DLLM, Case, case_model, case_prompts  # noqa: E402


def _import(path: Path, name: str, stubs: dict[str, dict]) -> types.ModuleType:
    """Import the file at `path` as module `name`, with `stubs` (module -> attributes) standing in
    for the imports it needs but its decoders never use."""
    for module, attributes in stubs.items():
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for key, value in attributes.items():
            setattr(sys.modules[module], key, value)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Counting:
    """Our model as the authors' LLaDA decoders call it: `model(x).logits`, `model.device`."""

    def __init__(self, model):
        self.model, self.calls = model, 0
        self.device = model.device

    def __call__(self, x, *args, **kwargs):
        assert not args and not kwargs, "the uncached decoders pass the canvas alone"
        self.calls += 1
        return types.SimpleNamespace(logits=self.model(x).logits)


class DreamSelf(Counting):
    """`self` of the authors' Dream generation mixin: called as `self(x, attention, positions)`,
    returns the network's raw (unshifted) logits: their loop shifts them itself."""

    def __call__(self, x, attention, positions):
        assert attention == "full" and positions is None, "one unpadded prompt"
        self.calls += 1
        return types.SimpleNamespace(logits=self.model.net(input_ids=x).logits)


class FastDllmModel(Counting):
    """Our LLaDA model as Fast-dLLM's cached loops call it: `model(x, use_cache=True)` (the whole
    canvas; its keys/values come back as a tuple per layer), `model(suffix, past_key_values=...)`
    (the prefix cache: the suffix after the cached columns) and `model(block, past_key_values=...,
    replace_position=...)` (the dual cache: the block's own keys take its slots). Calls whose block
    has no masks any more commit nothing: they are counted in `idle`."""

    def __init__(self, model, block_length: int):
        super().__init__(model)
        self.block_length, self.idle = block_length, 0

    def __call__(self, x, past_key_values=None, use_cache=False, replace_position=None):
        self.calls += 1
        if past_key_values is None:
            kv = DynamicCache(config=self.model.config)
            out = self.model(x, past_key_values=kv, use_cache=True)
            layers = [(layer.keys, layer.values) for layer in kv.layers]
            return types.SimpleNamespace(logits=out.logits, past_key_values=layers)
        self.idle += int(not (x[:, : self.block_length] == self.model.facts.mask_token_id).any())
        kv = DynamicCache(config=self.model.config)
        if replace_position is None:  # the suffix after the cached prefix
            first = past_key_values[0][0].shape[2]
            keep = slice(0, first)
        else:  # the block: every cached slot but its own
            where = replace_position[0].nonzero().flatten()
            first = int(where[0])
            keep = torch.ones(replace_position.shape[1], dtype=torch.bool)
            keep[where] = False
        for i, (k, v) in enumerate(past_key_values):
            kv.update(k[:, :, keep], v[:, :, keep], i)
        positions = torch.arange(first, first + x.shape[1]).unsqueeze(0)
        return types.SimpleNamespace(logits=self.model(x, position_ids=positions, past_key_values=kv,
                                                       use_cache=True).logits)


class DelayedCacheModel(Counting):
    """Our LLaDA model as the authors' `generate_multi_block_kv_cache` calls it (their modified
    LLaDA forward): `model(x)`, `model(x, use_cache=True)` (a refresh: keys/values of the whole
    canvas, a tuple per layer), and `model(window, past_key_values=cache, use_cache=True,
    update_kvcache=u, cache_position=positions)`: the window attends to the cache and to itself,
    at RoPE positions `positions`, and the cache keeps the window's first `u` columns."""

    def __call__(self, x, past_key_values=None, use_cache=False, update_kvcache=None, cache_position=None):
        self.calls += 1
        if not use_cache:
            return types.SimpleNamespace(logits=self.model(x).logits)
        if update_kvcache is None:  # the refresh
            kv = DynamicCache(config=self.model.config)
            out = self.model(x, past_key_values=kv, use_cache=True)
            return types.SimpleNamespace(logits=out.logits,
                                         past_key_values=[(layer.keys, layer.values) for layer in kv.layers])
        kv = past_key_values if past_key_values is not None else DynamicCache(config=self.model.config)
        held = kv.get_seq_length()
        out = self.model(x, position_ids=cache_position.unsqueeze(0), past_key_values=kv, use_cache=True)
        kv.crop(held + update_kvcache - kv.get_seq_length())
        return types.SimpleNamespace(logits=out.logits, past_key_values=kv)


def run_llada_cached(d3llm_util, model, prompt: list[int], case: Case) -> tuple[list[int], int, int]:
    counting = DelayedCacheModel(model)
    x, nfe = d3llm_util.generate_multi_block_kv_cache(
        counting, torch.tensor([prompt]), max_new_tokens=case.max_new_tokens, block_size=case.block_size,
        temperature=0.0, mask_id=model.facts.mask_token_id, threshold=case.threshold,
        block_add_threshold=case.block_add_threshold, decoded_token_threshold=case.block_activate_threshold,
        cache_delay_iter=case.cache_delay, refresh_interval=case.refresh_interval or 10000,
        eos_token_id=model.facts.eos_token_id, early_stop=True)
    return x[0, len(prompt):].tolist(), int(nfe), counting.calls


def run_fast_dllm(generate_util, model, prompt: list[int], case: Case) -> tuple[list[int], int, int, int]:
    counting = FastDllmModel(model, case.block_size)
    function = getattr(generate_util, case.official)
    steps = case.max_new_tokens // case.tokens_per_step if case.tokens_per_step else case.max_new_tokens
    x, nfe = function(counting, torch.tensor([prompt]), steps=steps, gen_length=case.max_new_tokens,
                      block_length=case.block_size, temperature=0.0, mask_id=model.facts.mask_token_id,
                      threshold=None if case.tokens_per_step else case.threshold)
    return x[0, len(prompt):].tolist(), int(nfe), counting.calls, counting.idle


def run_llada(d3llm_util, model, prompt: list[int], case: Case) -> tuple[list[int], int, int]:
    counting = Counting(model)
    x, nfe = d3llm_util.generate_multi_block(
        counting, torch.tensor([prompt]), max_new_tokens=case.max_new_tokens, block_size=case.block_size,
        temperature=0.0, mask_id=model.facts.mask_token_id, threshold=case.threshold,
        block_add_threshold=case.block_add_threshold, decoded_token_threshold=case.block_activate_threshold,
        eos_token_id=model.facts.eos_token_id, early_stop=True)
    return x[0, len(prompt):].tolist(), int(nfe), counting.calls


def run_dream(dream_util, model, prompt: list[int], case: Case) -> tuple[list[int], int, int]:
    me = DreamSelf(model)
    config = types.SimpleNamespace(return_dict_in_generate=False, max_length=len(prompt) + case.max_new_tokens,
                                   mask_token_id=model.facts.mask_token_id, temperature=0.0,
                                   alg="entropy_threshold", eos_token_id=model.facts.eos_token_id)
    x, nfe = dream_util.DreamGenerationMixin._sample_multi_block(
        me, torch.tensor([prompt]), None, config, threshold=case.threshold, block_size=case.block_size,
        block_add_threshold=case.block_add_threshold, decoded_token_threshold=case.block_activate_threshold,
        early_stop=True)
    return x[0, len(prompt):].tolist(), int(nfe), me.calls


def _commit(folder: Path) -> str:
    out = subprocess.run(["git", "-C", str(folder), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown (not a git checkout)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d3llm", type=Path, required=True, help="checkout of hao-ai-lab/d3LLM")
    parser.add_argument("--fast-dllm", type=Path, help="checkout of NVlabs/Fast-dLLM")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    llada_util = _import(args.d3llm / "d3llm/d3llm_LLaDA/d3llm_llada_generate_util.py", "official_llada",
                         {"utils.utils_LLaDA.model.modeling_llada": {"LLaDAModelLM": None}})
    dream_util = _import(args.d3llm / "d3llm/d3llm_DREAM/d3llm_dream_generate_util.py", "official_dream", {})
    runners = {"generate_multi_block": lambda *a: (*run_llada(llada_util, *a), 0),
               "DreamGenerationMixin._sample_multi_block": lambda *a: (*run_dream(dream_util, *a), 0),
               "generate_multi_block_kv_cache": lambda *a: (*run_llada_cached(llada_util, *a), 0)}
    if args.fast_dllm:
        fast_util = _import(args.fast_dllm / "llada/generate.py", "official_fast_dllm",
                            {"model.modeling_llada": {"LLaDAModelLM": None}})
        runners.update({name: lambda *a: run_fast_dllm(fast_util, *a) for name in FAST_DLLM})
    records = []
    for case in CASES:
        model = case_model(case.model)
        for prompt in case_prompts(case):
            response, nfe, forwards, idle = runners[case.official](model, prompt, case)
            records.append({"case": case.name, "prompt": prompt, "response": response, "nfe": nfe,
                            "forwards": forwards, "idle": idle})
        print(f"{case.name}: {len(case_prompts(case))} prompts", file=sys.stderr)
    source = {"hao-ai-lab/d3LLM": _commit(args.d3llm)}
    if args.fast_dllm:
        source["NVlabs/Fast-dLLM"] = _commit(args.fast_dllm)
    args.out.write_text(json.dumps({"source": source, "command": " ".join(sys.argv), "records": records}) + "\n")


if __name__ == "__main__":
    main()
