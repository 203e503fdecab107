"""How many examples does a dLLM need to learn one arithmetic operation? Drills, measured.

    python benchmarks/arith_drills.py --where response --steps 2400
    python benchmarks/arith_drills.py --where response --masks uniform --copy --steps 1200

Trains a copy of `--model` (default: the bundled tiny-teacher) on one operation `a op b = c`
(the `arith` task's operand ranges: a in 2..99, b in 2..30, + or -), batch 64, AdamW lr 1e-3,
20 warm-up steps, clip 1.0, token-mean cross-entropy over the masked tokens:

- `--where prompt`: prompt `a op b =`, response `c` + EOS padding; response tokens masked with
  ratio t ~ U(0, 1) (the calibration's prompt-side drills).
- `--where response`: prompt `Compute.`, response `a op b = c` + EOS padding; only the result
  digits are masked (ratio t), so every masked token has its operands and the EOS after it
  in view: the cleanest in-response signal a masking scheme can give. `--masks uniform`
  masks the whole response with ratio t instead (operands and the end of the number too), as
  masked-diffusion SFT does; `--copy` writes the result a second time after the equation
  (`a op b = c\nc`), as a word problem's next line and `#### N` do. `--masks blocks`
  masks like semi-autoregressive block diffusion: the response cut into blocks of
  `--block-size`, the blocks before a random one clean, that one masked with ratio t, every
  later one masked whole.

Every 100 steps it prints the training loss and, on 200 held-out drills (the whole result
masked), the share right at argmax with the rest of the canvas as in training ("length given":
the EOS after the result visible) and with everything from the result on masked ("length
hidden": the probe of benchmarks/teacher_probe.py). A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
import torch.nn.functional as F

from d3llm.models import DiffusionLM, load_network, load_tokenizer, resolve_model
from d3llm.models.tokenizer import prompt_ids

CANVAS = 12  # response tokens (the longest drill response is 10; 13 with --copy: 16 then)


def drill(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(2, 99)
    op = "+" if a <= 97 and rng.random() < 0.5 else "-"
    b = rng.randint(2, min(30, 99 - a)) if op == "+" else rng.randint(2, min(30, a))
    return f"{a} {op} {b} =", str(a + b if op == "+" else a - b)


def make_batch(tokenizer, rng: random.Random, rows: int, where: str, eos: int, copy: bool = False):
    """ids, attention, result-digit positions, response positions: (rows, L) each."""
    examples, canvas = [], CANVAS + 4 * copy
    for _ in range(rows):
        question, result = drill(rng)
        digits = tokenizer(result, add_special_tokens=False).input_ids
        if where == "prompt":
            prompt, head = prompt_ids(tokenizer, question), []
        else:
            prompt, head = prompt_ids(tokenizer, "Compute."), tokenizer(question + " ", add_special_tokens=False).input_ids
        tail = tokenizer("\n" + result, add_special_tokens=False).input_ids if copy else []
        response = (head + digits + tail + [eos] * canvas)[:canvas]
        examples.append((prompt, response, len(head), len(digits)))
    width = max(len(p) for p, *_ in examples) + canvas
    ids = torch.full((rows, width), tokenizer.pad_token_id)
    attention = torch.zeros_like(ids)
    result = torch.zeros_like(ids, dtype=torch.bool)
    response = torch.zeros_like(result)
    for row, (prompt, resp, start, count) in enumerate(examples):
        p = len(prompt)
        ids[row, : p + canvas] = torch.tensor(prompt + resp)
        attention[row, : p + canvas] = 1
        response[row, p : p + canvas] = True
        result[row, p + start : p + start + count] = True
    return ids, attention, result, response


def block_masks(response: torch.Tensor, masked: torch.Tensor, size: int, generator) -> torch.Tensor:
    """Semi-autoregressive block masks: per row a random current block of the response keeps
    `masked` (ratio t); blocks before it are clean, blocks after it masked whole."""
    offset = response.long().cumsum(1) - 1  # position within the response (-1: prompt)
    block = torch.where(response, offset // size, -1)
    blocks = int(block.max()) + 1
    current = torch.randint(0, blocks, (response.shape[0], 1), generator=generator)
    return response & ((block > current) | ((block == current) & masked))


def held_out(lm: DiffusionLM, tokenizer, where: str, copy: bool) -> tuple[float, float]:
    """% right with the length given, % right with it hidden (200 drills, seed 123). With
    `copy`, the copy is masked in both (the result must be computed)."""
    ids, attention, result, response = make_batch(tokenizer, random.Random(123), 200, where, lm.facts.eos_token_id, copy)
    from_result = response & (result.cumsum(1) > 0)
    hidden = from_result if where == "response" else response
    scores = []
    given = result | (from_result & (ids != lm.facts.eos_token_id) & ~result) if copy else result
    for masked in (given, hidden):
        with torch.no_grad():
            guess = lm(torch.where(masked, lm.facts.mask_token_id, ids), attention_mask=attention).logits.argmax(-1)
        scores.append(100.0 * ((guess == ids) | ~result).all(1).float().mean().item())
    return scores[0], scores[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-teacher")
    parser.add_argument("--where", choices=("prompt", "response"), default="response")
    parser.add_argument("--masks", choices=("targeted", "uniform", "blocks"), default="targeted",
                        help="in the response: mask only the result digits, the whole response, or by blocks")
    parser.add_argument("--block-size", type=int, default=4, help="--masks blocks: block length")
    parser.add_argument("--copy", action="store_true", help="write the result again after the equation")
    parser.add_argument("--steps", type=int, default=2400)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    for name in ("steps", "block_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    folder = resolve_model(args.model)
    tokenizer = load_tokenizer(folder)
    net = load_network(folder, dtype=torch.float32).train()
    lm = DiffusionLM(net)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    masks = f"blocks of {args.block_size}" if args.masks == "blocks" else args.masks
    print(f"| {args.where}, {masks}{', copy' if args.copy else ''} | step | examples | loss | right %, length given | right %, length hidden | s |")
    print("|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, attention, result, response = make_batch(tokenizer, rng, 64, args.where, lm.facts.eos_token_id, args.copy)
        t = torch.rand(64, 1, generator=generator)
        maskable = result if args.where == "response" and args.masks == "targeted" else response
        masked = maskable & (torch.rand(ids.shape, generator=generator) < t)
        if args.masks == "blocks":
            masked = block_masks(response, masked, args.block_size, generator)
        logits = lm(torch.where(masked, lm.facts.mask_token_id, ids), attention_mask=attention).logits
        ce = F.cross_entropy(logits.transpose(1, 2), ids, reduction="none")
        loss = (ce * masked).sum() / masked.sum().clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        optimizer.zero_grad()
        if step % 100 == 0:
            net.eval()
            given, hidden = held_out(lm, tokenizer, args.where, args.copy)
            net.train()
            print(f"| | {step} | {64 * step} | {loss.item():.3f} | {given:.1f} | {hidden:.1f} | "
                  f"{time.perf_counter() - started:.0f} |", flush=True)


if __name__ == "__main__":
    main()
