"""Build a tiny Fast-dLLM v2 checkpoint in the official layout and record what the official code does
with it: the fixtures a token-for-token test of our block decoder can later compare against.

Not a test (pytest does not collect it) and not part of the package. It imports the authors'
remote code (`configuration.py` and `modeling_ori.py` from GitHub wangziyannb/Fast-dLLM, a fork of
NVlabs/Fast-dLLM, commit 1aea573, folder `v2/`) from the folder given as `--official`, and needs
the older transformers that code was written for (4.56.2 here), so it runs in a side environment,
not in the repository's venv:

    cd /tmp/f2 && OMP_NUM_THREADS=1 /tmp/f2venv/bin/python \
        /work/main/tests/equivalence/official/make_fast_dllm_v2_fixtures.py \
        --official /tmp/f2 --out-dir /work/main/tests/equivalence/official

(/tmp/f2 holds the two files, e.g. from `git show 1aea573:v2/modeling_ori.py`; the side venv has
torch, transformers==4.56.2 and einops.) Nothing of the official code is stubbed or patched.

What it writes into `--out-dir`:

* `fast-dllm-v2-tiny/`: a random float32 `Fast_dLLM_QwenForCausalLM` (vocab 64, hidden 32,
  2 layers, 4 query / 2 KV heads, bd_size 8) saved with the official class's `save_pretrained`
  (config.json with model_type "Fast_dLLM_Qwen", plus `"mask_token_id": 2`, which the official
  code ignores and our loader reads; model.safetensors). Weights come from `torch.manual_seed`;
  the output head is scaled so greedy choices are far from float ties, the EOS row (id 1) gets a
  boost along the mean direction of the final hidden states so that part of the generations stop,
  and the mask row (id 2) is zeroed (generate loops forever if the mask id is ever the argmax).
* `fast_dllm_v2_fixtures.json`:
  - `logits`: full-forward logits `model(input_ids=x, block_size=8)` of the reloaded checkpoint
    (eval mode: the official block-causal mask aligned to position 0) for three inputs;
  - `cases`: `model.generate(prompt, max_new_tokens=24, block_size=8, small_block_size=S,
    threshold=T, mask_id=2, stop_token=1, temperature=0, use_block_cache=False)` for every prompt
    and setting, with the returned sequence, the sequence just before generate's final truncation
    at the stop token, and the forwards it made (counted by wrapping `model.forward`, which
    generate calls directly), split into cache-update forwards (`update_past_key_values=True`:
    the prompt prefill and the one forward after each completed block) and diffusion forwards;
  - `block_cache_cases`: a smaller set with `use_block_cache=True` (setting a).
  Each case also stores the smallest top-1/top-2 logit gap and the smallest |p - threshold| seen
  at the columns it decided, a check that the fixture does not hinge on float rounding.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

COMMAND = ("cd /tmp/f2 && OMP_NUM_THREADS=1 /tmp/f2venv/bin/python "
           "/work/main/tests/equivalence/official/make_fast_dllm_v2_fixtures.py "
           "--official /tmp/f2 --out-dir /work/main/tests/equivalence/official")

BLOCK = 8
MASK_ID, EOS_ID, PAD_ID = 2, 1, 0
MAX_NEW_TOKENS = 24
SETTINGS = {  # name -> (threshold, small_block_size)
    "a": (0.9, 4),
    "b": (1, 8),
    "c": (0.7, 2),
}
# P < 8, P == 8 (the prompt is not attended: no prefill, the first window starts at position 0),
# P > 8 with P % 8 == 0 (prefill + an AR token before the first block), and P % 8 != 0.
PROMPT_LENGTHS = [1, 2, 3, 5, 7, 8, 8, 8, 9, 11, 13, 15, 16, 16, 17, 20, 23, 24, 24, 27, 30, 32, 33, 36,
                  39, 40]
LOGIT_LENGTHS = [13, 16, 21]
BLOCK_CACHE_PROMPTS = 8


def tiny_config(cfg_cls):
    return cfg_cls(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, bd_size=BLOCK,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, pad_token_id=PAD_ID,
        eos_token_id=EOS_ID, bos_token_id=None, mask_token_id=MASK_ID, torch_dtype="float32",
        use_cache=True,
    )


def init_weights(model, seed: int, head_scale: float, eos_boost: float) -> None:
    """Deterministic weights with an O(1) signal through every layer (the class's own init,
    std 0.02, would leave the output a function of the current token alone)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name == "lm_head.weight":  # the class's own init (std 0.02), scaled below
                p.copy_(model.config.initializer_range * torch.randn(p.shape, generator=gen))
            else:  # the other linear weights: unit-variance outputs
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
        model.lm_head.weight.mul_(head_scale)
        # EOS: add a bias-like term along the mean direction of the final (normed) hidden states.
        probe = torch.randint(3, 64, (16, 24), generator=gen)
        hidden = model.model(input_ids=probe, block_size=BLOCK).last_hidden_state
        direction = hidden.mean(dim=(0, 1))
        direction = direction / direction.norm() ** 2  # hidden . direction ~ 1 on average
        model.lm_head.weight[EOS_ID] += eos_boost * direction
        # The mask id must never be the argmax: the official generate would "commit" it at a masked
        # column, which then stays masked, and loop forever. A zero row gives it logit 0 everywhere.
        model.lm_head.weight[MASK_ID] = 0.0
        # A window of masks alone (P == 8: no prompt, no cache) gives the same prediction at every column
        # (equal values make attention position-blind), so which column a forced pick takes is decided by
        # float rounding. Redraw the mask's embedding until that prediction clears the thresholds below 1
        # (all columns of the sub-block are then committed at once, the same token each).
        window = torch.full((1, BLOCK), MASK_ID)
        for _ in range(100):
            if float(torch.softmax(model(input_ids=window, block_size=BLOCK).logits[0, 0], -1).max()) > 0.95:
                break
            model.model.embed_tokens.weight[MASK_ID] = torch.randn(model.config.hidden_size, generator=gen)


class ForwardLog:
    """Wraps `model.forward` on the instance (generate calls `self.forward(...)`) and records each call,
    with the margins of the decisions generate takes from its output."""

    def __init__(self, model, threshold, small_block_size):
        self.model, self.threshold, self.small = model, threshold, small_block_size
        self.inner = model.forward
        self.calls = []
        self.min_gap = float("inf")  # top-1 minus top-2 logit at every column whose token is taken
        self.min_thr = float("inf")  # |max prob - threshold| at every masked column of the current sub-block
        self.min_pick = float("inf")  # max prob of the forced column minus the runner-up's, when the forced pick matters
        self.exact_ties = 0
        self.rounding_ties = 0
        model.forward = self

    def close(self):
        del self.model.forward

    def __call__(self, *args, **kwargs):
        if len(self.calls) >= MAX_FORWARDS:
            raise RuntimeError(f"generate made {MAX_FORWARDS} forwards: is the mask id being predicted?")
        ids = kwargs["input_ids"].clone()
        out = self.inner(*args, **kwargs)
        n_masks = int((ids == MASK_ID).sum())
        if kwargs.get("update_past_key_values", False):
            self.calls.append(["prefill" if not self.calls else "update", ids.shape[1], n_masks])
            self._gap(out.logits[0, -1:])  # the next token is the argmax of the last column
            return out
        logits = torch.cat([out.logits[:, :1], out.logits[:, :-1]], dim=1)[0]  # generate's shift
        masked = ids[0] == MASK_ID
        if kwargs.get("replace_position") is not None:  # block cache: the input is the sub-block itself
            self.calls.append(["diffusion_subblock", ids.shape[1], n_masks])
        else:
            self.calls.append(["diffusion", ids.shape[1], n_masks])
            start = int(masked.nonzero()[0]) // self.small * self.small  # the leftmost sub-block with masks
            logits, masked = logits[start:start + self.small], masked[start:start + self.small]
        logits = logits[masked]
        p = torch.softmax(logits, dim=-1).max(dim=-1).values
        taken = p > self.threshold
        taken[p.argmax()] = True
        self._gap(logits[taken])
        if self.threshold < 1:
            self.min_thr = min(self.min_thr, float((p - self.threshold).abs().min()))
        if len(p) > 1 and not bool((p > self.threshold).any()):
            top = p.topk(2)
            i, j = top.indices.tolist()
            if torch.equal(logits[i], logits[j]):  # the same logit row twice (the first two columns of a
                self.exact_ties += 1               # window, by the shift): argmax takes the first, exactly
            elif float((logits[i] - logits[j]).abs().max()) < 1e-4:  # equal up to rounding: a coin toss
                self.rounding_ties += 1
            else:
                self.min_pick = min(self.min_pick, float(top.values[0] - top.values[1]))
        return out

    def _gap(self, logits):
        top = logits.topk(2, dim=-1).values
        self.min_gap = min(self.min_gap, float((top[:, 0] - top[:, 1]).min()))


MARGIN = 1e-3
MAX_DRAWS = 8
MAX_FORWARDS = 200


def margin(case) -> float:
    values = [case["min_logit_gap"], case["min_threshold_distance"], case["min_pick_gap"]]
    return min(v for v in values if v is not None)


def truncation_line(cls) -> int:
    """Line number (in modeling_ori.py) of generate's final `if stop_token in input_ids[...]` (the truncation)."""
    code = inspect.unwrap(cls.generate).__code__
    lines, first = inspect.getsourcelines(code)
    hits = [first + i for i, line in enumerate(lines)
            if line.strip().startswith("if stop_token in input_ids[:, original_input_length:]")]
    return hits[-1]


def run_generate(model, prompt, threshold, small, use_block_cache, trunc_line):
    """Official generate on one prompt; returns the sequence, the sequence before truncation and the log."""
    code = inspect.unwrap(type(model).generate).__code__
    before = {}

    def local(frame, event, arg):
        if event == "line" and frame.f_lineno == trunc_line:
            before["ids"] = frame.f_locals["input_ids"].clone()
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is code else None

    log = ForwardLog(model, threshold, small)
    sys.settrace(tracer)
    try:
        with torch.no_grad():
            seq = model.generate(
                torch.tensor([prompt]), max_new_tokens=MAX_NEW_TOKENS, block_size=BLOCK,
                small_block_size=small, threshold=threshold, mask_id=MASK_ID, stop_token=EOS_ID,
                temperature=0, use_block_cache=use_block_cache)
    finally:
        sys.settrace(None)
        log.close()
    seq = seq[0].tolist()
    untruncated = before["ids"][0].tolist()
    kinds = [c[0] for c in log.calls]
    return {
        "prompt": prompt,
        "prompt_length": len(prompt),
        "threshold": threshold,
        "small_block_size": small,
        "use_block_cache": use_block_cache,
        "sequences": seq,
        "response": seq[len(prompt):],
        "stopped": EOS_ID in seq[len(prompt):],
        "untruncated": untruncated,
        "forwards": len(log.calls),
        "update_forwards": sum(k in ("prefill", "update") for k in kinds),
        "diffusion_forwards": sum(k.startswith("diffusion") for k in kinds),
        "prefill": kinds[:1] == ["prefill"] and len(prompt) > BLOCK,
        "trace": log.calls,  # [kind, input length, masks in the input] per forward, in order
        "min_logit_gap": round(log.min_gap, 5),
        "min_threshold_distance": None if threshold >= 1 else round(log.min_thr, 5),
        "min_pick_gap": None if log.min_pick == float("inf") else round(log.min_pick, 5),
        "exact_ties": log.exact_ties,
        "rounding_ties": log.rounding_ties,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, type=Path, help="folder with configuration.py and modeling_ori.py")
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head-scale", type=float, default=25.0, help="lm_head.weight is multiplied by this")
    ap.add_argument("--eos-boost", type=float, default=2.0, help="bias-like logit added to EOS (id 1)")
    ap.add_argument("--probe", action="store_true", help="only report the EOS fraction; write nothing")
    args = ap.parse_args()

    torch.set_num_threads(1)
    sys.path.insert(0, str(args.official.resolve()))
    import transformers
    from configuration import Fast_dLLM_QwenConfig
    from modeling_ori import Fast_dLLM_QwenForCausalLM

    torch.manual_seed(args.seed)
    model = Fast_dLLM_QwenForCausalLM(tiny_config(Fast_dLLM_QwenConfig)).float().eval()
    init_weights(model, args.seed, args.head_scale, args.eos_boost)

    ckpt = args.out_dir / "fast-dllm-v2-tiny"
    if not args.probe:
        model.save_pretrained(ckpt, safe_serialization=True)
        model = Fast_dLLM_QwenForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
        config_json = json.loads((ckpt / "config.json").read_text())
        assert config_json["model_type"] == "Fast_dLLM_Qwen" and config_json["mask_token_id"] == MASK_ID
        assert config_json["bd_size"] == BLOCK

    trunc_line = truncation_line(Fast_dLLM_QwenForCausalLM)
    gen = torch.Generator().manual_seed(1234)
    prompts, by_prompt, redrawn = [], [], 0
    for n in PROMPT_LENGTHS:
        draws = []
        for _ in range(MAX_DRAWS):  # redraw a prompt (same length) whose decisions come within MARGIN of a tie
            prompt = torch.randint(3, 64, (n,), generator=gen).tolist()
            runs = [{"setting": name, **run_generate(model, prompt, t, s, False, trunc_line)}
                    for name, (t, s) in SETTINGS.items()]
            draws.append((min(margin(c) for c in runs), prompt, runs))
            if draws[-1][0] >= MARGIN:
                break
        best = max(draws, key=lambda d: d[0])
        redrawn += len(draws) - 1
        if best[0] < MARGIN:
            print(f"  P={n}: no draw of {MAX_DRAWS} clears the margin; kept one at {best[0]}")
        prompts.append(best[1])
        by_prompt.append(best[2])
    cases = [runs[i] for i in range(len(SETTINGS)) for runs in by_prompt]  # grouped by setting
    print(f"{redrawn} prompts redrawn for a margin under {MARGIN}")
    stopped = sum(c["stopped"] for c in cases)
    print(f"EOS boost {args.eos_boost}: {stopped}/{len(cases)} generations stop "
          f"(per setting: {[sum(c['stopped'] for c in cases if c['setting'] == s) for s in SETTINGS]}); "
          f"min logit gap {min(c['min_logit_gap'] for c in cases)}, "
          f"min |p - T| {min(c['min_threshold_distance'] for c in cases if c['min_threshold_distance'] is not None)}, "
          f"min pick gap {min(c['min_pick_gap'] for c in cases if c['min_pick_gap'] is not None)}")
    for c in sorted(cases, key=lambda c: c["min_logit_gap"])[:5]:
        print("  smallest gaps:", c["setting"], c["prompt_length"], c["min_logit_gap"], c["min_threshold_distance"],
              c["min_pick_gap"])
    print("rounding ties:", [(c["setting"], c["prompt_length"]) for c in cases if c["rounding_ties"]])
    if args.probe:
        return

    block_cache_cases = []
    for prompt in prompts[:: len(prompts) // BLOCK_CACHE_PROMPTS][:BLOCK_CACHE_PROMPTS]:  # every 3rd
        threshold, small = SETTINGS["a"]
        case = run_generate(model, prompt, threshold, small, True, trunc_line)
        block_cache_cases.append({"setting": "a", **case})

    gen = torch.Generator().manual_seed(4321)
    logits = []
    with torch.no_grad():
        for n in LOGIT_LENGTHS:
            x = torch.randint(3, 64, (1, n), generator=gen)
            out = model(input_ids=x, block_size=BLOCK).logits[0]
            logits.append({"input_ids": x[0].tolist(), "block_size": BLOCK,
                           "logits": [[round(v, 6) for v in row] for row in out.tolist()]})

    fixtures = {
        "source": {
            "repo": "wangziyannb/Fast-dLLM (fork of NVlabs/Fast-dLLM)",
            "commit": "1aea573",
            "files": ["v2/modeling_ori.py", "v2/configuration.py"],
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        "command": COMMAND,
        "checkpoint": "fast-dllm-v2-tiny",
        "weights": {"seed": args.seed, "head_scale": args.head_scale, "eos_boost": args.eos_boost,
                    "dtype": "float32"},
        "generate": {"max_new_tokens": MAX_NEW_TOKENS, "block_size": BLOCK, "mask_id": MASK_ID,
                     "stop_token": EOS_ID, "temperature": 0},
        "settings": {name: {"threshold": t, "small_block_size": s} for name, (t, s) in SETTINGS.items()},
        "notes": [
            "sequences: what generate returned (prompt included), truncated after the first stop token;"
            " untruncated: its input_ids just before that truncation (may hold mask ids after the stop token).",
            "forwards = update_forwards + diffusion_forwards; update forwards are called with"
            " update_past_key_values=True (the prefill of the prompt's whole blocks when P > 8, and one"
            " after each completed block, whose last column gives the next block's first token by argmax).",
            "trace: [kind, input length, mask ids in the input] per forward, in call order.",
            "min_logit_gap: smallest top-1 minus top-2 logit over the columns whose token generate took (the"
            " committed columns of each diffusion step, the last column of each update forward);"
            " min_threshold_distance: smallest |max prob - threshold| over the masked columns of the current"
            " sub-block; min_pick_gap: when no column passes the threshold, the forced argmax column's max prob"
            " minus the runner-up's. Prompts were redrawn (same length) until all three are >= 1e-3.",
            "exact_ties: forced picks between two bitwise-equal rows (the first two columns of a window, by the"
            " shift), which argmax resolves to the first; rounding_ties: forced picks among columns equal up to"
            " float rounding, i.e. decided by rounding noise. Only P == 8 with threshold 1 has them (a window"
            " of masks alone predicts the same at every column): compare those cases loosely or skip them.",
            "P == 8: no prefill, the first window is the 8 masks at RoPE positions 0..7 with no cache, so the"
            " prompt is never attended and every P == 8 case decodes the same response.",
        ],
        "stopped": {"cases": sum(c["stopped"] for c in cases), "of": len(cases)},
        "logits": logits,
        "cases": cases,
        "block_cache_cases": block_cache_cases,
    }
    out = args.out_dir / "fast_dllm_v2_fixtures.json"
    out.write_text(json.dumps(fixtures, separators=(",", ":")) + "\n")
    print(f"wrote {out} and {ckpt}/")


if __name__ == "__main__":
    main()
