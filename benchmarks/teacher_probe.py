"""Does a training recipe teach a small dLLM arithmetic? A probe of minutes, not a run of hours.

    python benchmarks/teacher_probe.py --config configs/tiny-teacher.yaml --steps 300 \
        --train-set objective.weighting=token_mean --train-set 'tasks={arith: 1.0}' --threads 1

Trains the recipe's starting network (`init_from`, adapted from an AR model if the family asks)
with `d3llm train`'s own data and objective for `--steps` steps (AdamW, the recipe's lr, warm-up
and cosine decay over the probe's steps), then measures on held-out problems:

- `probe`: validation `arith` problems with the gold solution on the canvas up to the first
  `a op b = ` and the rest of the canvas masked: the share whose result digits are all right
  at argmax (one forward). It isolates "can the model compute one operation inside the
  response", which whole-problem accuracy mixes with copying and decoding order.
- `arith %`: validation accuracy with one token per step (`vanilla`; `ar` for AR models).

Prints a Markdown row per evaluation and appends the final row, with the settings, as one JSON
line to `--log`. This is a benchmark: it asserts nothing, and a row compares with rows of the
same probe length only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import get_cosine_schedule_with_warmup

from d3llm.decode import preset
from d3llm.errors import D3llmError
from d3llm.eval.runner import evaluate
from d3llm.models import DiffusionLM, LoadedModel
from d3llm.models.tokenizer import prompt_ids
from d3llm.tasks import get_task
from d3llm.train.config import TrainConfig, load_yaml
from d3llm.train.data import build_examples, collate
from d3llm.train.objectives import masked_diffusion_loss, next_token_loss
from d3llm.train.trainer import batches_by_length, network_for, tokenizer_for


def first_operation_probe(lm: DiffusionLM, tokenizer, gen_length: int, n: int) -> tuple[float, float]:
    """(% right, mean cross-entropy in nats per result digit) on validation arith problems:
    the solution up to its first `= ` given, the rest of the canvas masked (a diffusion
    model), or the digits teacher-forced (an AR model: its next-token prediction)."""
    right, nats = 0, []
    for problem in get_task("arith").problems("validation", n, seed=0):
        line = problem.target.split("\n")[0]  # "23 + 19 = 42"
        given, _, result = line.rpartition("= ")
        head = tokenizer(given + "= ", add_special_tokens=False).input_ids
        digits = tokenizer(result, add_special_tokens=False).input_ids
        prompt = prompt_ids(tokenizer, problem.prompt)
        if lm.facts.is_diffusion:
            canvas = prompt + head + [lm.facts.mask_token_id] * (gen_length - len(head))
        else:
            canvas = prompt + head + digits
        with torch.no_grad():
            logits = lm(torch.tensor([canvas])).logits[0].float()  # (L, V), aligned
        start = len(prompt) + len(head)
        window = logits[start : start + len(digits)]
        right += window.argmax(-1).tolist() == digits
        nats += torch.nn.functional.cross_entropy(window, torch.tensor(digits), reduction="none").tolist()
    return 100.0 * right / n, sum(nats) / len(nats)


def measure(net, tokenizer, config: TrainConfig, n: int) -> dict:
    net.eval()
    lm = DiffusionLM(net)
    method = "vanilla" if lm.facts.is_diffusion else "ar"
    probe_pct, probe_nats = first_operation_probe(lm, tokenizer, config.gen_length, n)
    row = {"probe_pct": probe_pct, "probe_nats": probe_nats}
    result = evaluate(LoadedModel(lm, tokenizer, Path("."), "probe"), get_task("arith"),
                      preset(method, max_new_tokens=config.gen_length), n=n, seed=0, split="validation",
                      batch_size=16)
    row["arith_pct"] = result.accuracy_pct
    net.train()
    return row


def parse_settings(pairs: list[str]) -> dict:
    """`--train-set a=1 --train-set objective.weighting=token_mean` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--train-set expects NAME=VALUE, got {pair!r}")
        *parents, leaf = key.split(".")
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = load_yaml(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/tiny-teacher.yaml", help="the recipe to start from")
    parser.add_argument("--train-set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a recipe field (repeatable; as `d3llm distill --train-set`)")
    parser.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)  # refused below
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--n", type=int, default=64, help="validation problems per measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default=None)
    parser.add_argument("--log", default="runs/teacher-probe.jsonl")
    args = parser.parse_args()
    if args.set:  # --set means decode settings in the d3llm commands; training settings are --train-set
        parser.error(f"--set is now --train-set (a recipe field; --set sets decode settings in d3llm's commands); "
                     f"give --train-set {args.set[0]}")
    for name in ("steps", "eval_every", "n", "threads"):
        if getattr(args, name) < (0 if name == "steps" else 1):
            parser.error(f"--{name.replace('_', '-')} must be >= {0 if name == 'steps' else 1}, got {getattr(args, name)}")
    if not Path(args.config).is_file():
        parser.error(f"--config {args.config} not found")
    torch.set_num_threads(args.threads)
    raw = load_yaml(Path(args.config).read_text()) or {}
    settings = parse_settings(args.train_set)
    for key, value in settings.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) and key == "objective" else value
    config = TrainConfig.from_dict(raw, source=args.config)
    torch.manual_seed(config.seed)
    tokenizer = tokenizer_for(config, Path("/nonexistent"))
    net = network_for(config, tokenizer)
    lm = DiffusionLM(net)
    gen_length = config.gen_length if lm.facts.is_diffusion else None
    examples = build_examples(tokenizer, config.tasks, min(config.num_examples, max(args.steps, 1) * config.batch_size), "train", config.seed, gen_length,
                              distinct=config.examples == "distinct")
    batches = batches_by_length(examples, config.batch_size, config.seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, args.steps // 10), args.steps)
    generator = torch.Generator().manual_seed(config.seed)
    label = args.label or " ".join(args.train_set) or "recipe as is"
    print(f"| {label} | step | loss | probe % | probe nats | arith % | train s |\n|---|---|---|---|---|---|---|")
    losses, train_seconds, row = [], 0.0, {}
    for step in range(0, args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            row = {"step": step, "loss": sum(losses[-20:]) / max(len(losses[-20:]), 1),
                   **measure(net, tokenizer, config, args.n), "train_seconds": round(train_seconds, 1)}
            print(f"| | {step} | {row['loss']:.3f} | {row['probe_pct']:.1f} | {row['probe_nats']:.3f} | "
                  f"{row['arith_pct']:.1f} | {train_seconds:.0f} |", flush=True)
        if step == args.steps:
            break
        started = time.perf_counter()
        batch = collate(batches[step % len(batches)], tokenizer.pad_token_id)
        if lm.facts.is_diffusion:
            loss = masked_diffusion_loss(lm, batch, generator, config.objective)
        else:
            loss = next_token_loss(lm, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        train_seconds += time.perf_counter() - started
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    with open(args.log, "a") as f:
        f.write(json.dumps({"label": label, "config": args.config, "set": args.train_set, "n": args.n, **row}) + "\n")


if __name__ == "__main__":
    try:
        main()
    except D3llmError as exc:  # a bad recipe or --set: one line, as the d3llm command says it
        raise SystemExit(f"error: {exc}") from None
