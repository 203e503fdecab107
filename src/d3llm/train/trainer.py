"""`d3llm train`: train a model from a `TrainConfig` with transformers' `Trainer`.

The Trainer supplies the loop, AdamW, the schedule, gradient clipping, checkpoints with
optimizer and RNG state, and data parallelism under `torchrun` / `accelerate launch` (gloo on
CPU). We supply the objective (`objectives.py`), length-grouped batches, a validation-accuracy
callback and the output folder:

    OUT/
      config.json, model.safetensors, tokenizer.json ...   final model (a loadable folder)
      train_config.yaml     the resolved recipe
      provenance.json       command, seed, code version, training time, final metrics, and
                            `started_from`: the provenance of the `init_from` model (earlier stages)
      started_from.json     that provenance, read when the run first started
      curve.jsonl           validation accuracy against step and training seconds
      runs.jsonl            one line per invocation (start step, processes): resumes are visible
      checkpoints/          Trainer checkpoints (resume: run the same command again)

Crash safety (docs/files.md): every file a resume reads is written atomically (temp + fsync +
rename, `d3llm.files`), so a kill -9 at any moment leaves the old file or the new one; the
Trainer's own checkpoint files are checked on resume (trainer_state.json parses, the weights'
sizes match their header, the torch files are whole archives) and a damaged checkpoint is
removed in favour of the one before it. A folder that holds files but no train_config.yaml is
not a run of ours and is refused unless `overwrite`.

`stop_at` (`d3llm train --stop-at STEP`) ends a run early at a step of its recipe, with the
recipe's learning-rate schedule unchanged: for a run that cannot finish in the time there is.
The model written is that step's, and provenance.json says `stopped_at`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from d3llm.decode import preset
from d3llm.decode.config import validation_method
from d3llm.errors import D3llmError
from d3llm.eval.runner import evaluate
from d3llm.files import (
    TEMP_MARK, append_line, claim_folder, read_json, read_jsonl, read_text, remove_leftovers, safetensors_header,
    write_atomic,
)
from d3llm.models import DiffusionLM, LoadedModel, load_network, load_tokenizer, make_config, resolve_model
from d3llm.models.convert import ar_to_block, ar_to_dream, ar_to_llada
from d3llm.models.lm import DECODE_BLOCK_KEY
from d3llm.models.tokenizer import build_tokenizer
from d3llm.tasks import get_task
from d3llm.train.config import TrainConfig, load_yaml
from d3llm.train.data import build_examples, collate
from d3llm.train.distill import collate_distill, distill_examples, distill_loss, with_lora
from d3llm.train.objectives import block_diffusion_loss, masked_diffusion_loss, next_token_loss
from d3llm.version import code_version

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
TRAIN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # TrainConfig.precision -> weights
STARTED_FROM = "started_from.json"
SAVED_CONFIG = "train_config.yaml"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def batches_by_length(examples: list[dict], batch_size: int, seed: int) -> list[list[dict]]:
    """Batches of similar length (so arith-long does not pad short problems), shuffled."""
    ordered = sorted(examples, key=lambda ex: ex["length"])
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    random.Random(seed).shuffle(batches)
    return batches


class _DiffusionTrainer(Trainer):
    """Trainer whose loss is a d3llm objective on the (possibly DDP-wrapped) network."""

    def __init__(self, *args, facts, distill=None, objective=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.facts, self.distill, self.objective = facts, distill, objective

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lm = DiffusionLM(model, self.facts)  # model may be DDP-wrapped: call through it
        if self.distill is not None:
            progress = self.state.global_step / max(self.state.max_steps, 1)
            return distill_loss(lm, inputs, self.distill, progress)[0]
        if self.facts.family == "block":
            return block_diffusion_loss(lm, inputs, objective=self.objective)
        if self.facts.is_diffusion:
            return masked_diffusion_loss(lm, inputs, objective=self.objective)
        return next_token_loss(lm, inputs)


class _ValidationCallback(TrainerCallback):
    """Every `eval_every` steps (rank 0): validation accuracy per task -> curve.jsonl."""

    def __init__(self, config: TrainConfig, net, tokenizer, out: Path, clock: "_Clock",
                 progress: Progress | None = None):
        self.config, self.net, self.tokenizer, self.out, self.clock = config, net, tokenizer, out, clock
        self.progress = progress
        rows = read_jsonl(out / "curve.jsonl", "delete the damaged line (the curve is a log) and run again")
        self.last: dict = rows[-1] if rows else {}  # survives a resume

    def on_step_end(self, args, state, control, **kwargs):
        every = self.config.eval_every
        if every and state.global_step % every == 0 and state.is_world_process_zero:
            self.record(state.global_step, state.log_history)

    def record(self, step: int, log_history: list | None = None) -> dict:
        metrics = validation_accuracy(self.net, self.tokenizer, self.config, self.out, self.progress)
        losses = [h["loss"] for h in (log_history or []) if "loss" in h]
        row = {"step": step, "train_seconds": round(self.clock.total(), 1),
               "loss": losses[-1] if losses else None, **metrics}
        append_line(self.out / "curve.jsonl", json.dumps(row))
        log.info("validation at step %d: %s", step, metrics)
        self.last = row
        return row


class _StepProgress(TrainerCallback):
    """Training steps (and the latest loss) to a `Progress` callback, on rank 0."""

    def __init__(self, progress: Progress, end: int):
        self.progress, self.end, self.loss = progress, end, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            what = "training" if self.loss is None else f"training, loss {self.loss:.3f}"
            self.progress(what, state.global_step, self.end)


class _StopAt(TrainerCallback):
    """End training (with a checkpoint) once `step` is reached."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = control.should_training_stop = True


class _Clock:
    """Training seconds summed over runs (resumes), kept in OUT/train_seconds."""

    def __init__(self, out: Path):
        self.file = out / "train_seconds"
        self.before = self._read(out)
        self.start = time.perf_counter()

    def _read(self, out: Path) -> float:
        """The seconds so far; a damaged file (an older version's crash) falls back to the curve's."""
        try:
            return float(read_text(self.file)) if self.file.is_file() else 0.0
        except (D3llmError, ValueError):
            rows = read_jsonl(out / "curve.jsonl", "delete the damaged line and run again")
            log.info("%s is damaged; training time restarts from the curve's last record", self.file)
            return float(rows[-1].get("train_seconds", 0.0)) if rows else 0.0

    def total(self) -> float:
        return self.before + time.perf_counter() - self.start

    def save(self) -> None:
        write_atomic(self.file, f"{self.total():.1f}")


class _ClockCallback(TrainerCallback):
    def __init__(self, clock: _Clock):
        self.clock = clock

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.clock.save()


# `train(..., progress=...)`: told (what, done, total) as training steps and validation problems
# complete, so a caller can draw one bar (the CLI does; None: transformers' own tqdm bar).
Progress = Callable[[str, int, int], None]


def validation_accuracy(net, tokenizer, config: TrainConfig, out: Path,
                        progress: Progress | None = None) -> dict[str, float]:
    total, done = config.eval_n * len(config.tasks), 0

    def advance(k: int) -> None:
        nonlocal done
        done += k
        if progress:
            progress("validation", done, total)

    was_training = net.training
    net.eval()
    lm = LoadedModel(DiffusionLM(net), tokenizer, out, out.name)
    method = config.eval_method or validation_method(lm.facts.family)
    metrics = {}
    for name in config.tasks:
        result = evaluate(lm, get_task(name), preset(method, max_new_tokens=config.gen_length),
                          n=config.eval_n, seed=0, split="validation", batch_size=16, progress=advance)
        metrics[f"{name}_accuracy_pct"] = round(result.accuracy_pct, 2)
        metrics[f"{name}_tpf"] = round(result.tokens_per_forward, 3)
    net.train(was_training)
    return metrics


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest Trainer checkpoint that was fully written; a kill can leave a partial or
    damaged one behind: those are removed (they are ours), so the one before them is used."""
    found = []
    for ckpt in folder.glob("checkpoint-*"):
        if not _CHECKPOINT_NAME.fullmatch(ckpt.name):
            continue  # not the Trainer's (checkpoint-final, a user's copy): left alone
        problem = checkpoint_problem(ckpt)
        if problem:
            log.info("removing the damaged checkpoint %s (%s)", ckpt, problem)
            shutil.rmtree(ckpt, ignore_errors=True)
            continue
        found.append((_step_of(ckpt), ckpt))
    return max(found)[1] if found else None


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is missing or damaged in a Trainer checkpoint, or None when a resume can read it."""
    try:
        state = read_json(ckpt / "trainer_state.json")
        if not isinstance(state, dict) or state.get("global_step") != _step_of(ckpt):
            return "trainer_state.json does not hold this step"
        weights = [ckpt / n for n in ("model.safetensors", "adapter_model.safetensors") if (ckpt / n).is_file()]
        if not weights:
            return "no weights"
        for file in weights:
            safetensors_header(file)
    except D3llmError as exc:
        return str(exc)
    for name in ("optimizer.pt", "scheduler.pt"):
        if not (ckpt / name).is_file():
            return f"no {name}"
    for file in [*ckpt.glob("*.pt"), *ckpt.glob("*.pth"), *ckpt.glob("*.bin")]:
        if not zipfile.is_zipfile(file):  # torch.save writes a zip archive; a cut one has no directory
            return f"{file.name} is truncated"
    return None


def tokenizer_for(config: TrainConfig, out: Path):
    """The recipe's tokenizer: `tokenizer_from`'s, a resumed run's, or a new one."""
    if config.tokenizer_from:
        return load_tokenizer(resolve_model(config.tokenizer_from))
    if (out / "tokenizer.json").is_file():  # a resumed run keeps the tokenizer it started with
        return load_tokenizer(out)
    corpus = []
    for name in config.tasks:
        for p in get_task(name.replace("arith-long", "arith")).problems("train", 3000, config.seed):
            corpus += [p.prompt, p.target]
    return build_tokenizer(corpus, config.vocab_size)


def network_for(config: TrainConfig, tokenizer):
    """The recipe's starting network: `init_from` (adapted from AR if need be) or a new one."""
    if config.init_from:
        net = load_network(resolve_model(config.init_from), dtype=TRAIN_DTYPES[config.precision])
        if net.config.d3llm_family == "ar" and config.family == "block":
            net = ar_to_block(net, tokenizer.mask_token_id, _new_block_size(config))
        elif net.config.d3llm_family in ("ar", "block") and config.family in ("dream", "llada"):
            # an AR model, or a block model (the same Llama with the AR shift, already at ease with
            # masks: docs/teacher-training.md), becomes a fully bidirectional dLLM
            adapt = ar_to_dream if config.family == "dream" else ar_to_llada
            net = adapt(net, mask_token_id=tokenizer.mask_token_id)
        if net.config.d3llm_family != config.family:
            raise D3llmError(f"`init_from` holds a {net.config.d3llm_family} model, not {config.family}")
        if config.block_size not in (None, getattr(net.config, "d3llm_block_size", None)):
            raise D3llmError(f"`init_from` is a block model with blocks of {net.config.d3llm_block_size}, not "
                             f"`block_size` {config.block_size}: leave block_size out")
        if hasattr(net.config, DECODE_BLOCK_KEY):  # a decode preference measured on the old weights, not the new
            delattr(net.config, DECODE_BLOCK_KEY)
        return net.train()
    shape = config.model
    model_config = make_config(
        config.family, vocab_size=len(tokenizer),
        mask_token_id=tokenizer.mask_token_id if config.family != "ar" else None,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        hidden_size=shape.hidden_size, num_layers=shape.num_layers, num_heads=shape.num_heads,
        num_kv_heads=shape.num_kv_heads, intermediate_size=shape.intermediate_size, max_length=shape.max_length,
        block_size=_new_block_size(config) if config.family == "block" else None,
    )
    return DiffusionLM.new(model_config, seed=config.seed).net.train()


def _new_block_size(config: TrainConfig) -> int:
    """The block size of a block model the recipe creates (from AR weights or from scratch)."""
    if config.block_size is None:
        raise D3llmError("a new block model needs `block_size` (tokens per block) in the recipe")
    return config.block_size


def _is_first_process() -> bool:
    """Rank 0 under torchrun / accelerate (before the Trainer exists), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _ddp_backend() -> str | None:
    """gloo for data parallelism without GPUs (torchrun / accelerate set WORLD_SIZE)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        return "gloo"
    return None


def claim_out(out: Path, overwrite: bool = False) -> None:
    """Refuse (unless `overwrite`) an output folder holding files but no run of ours: the
    trainer writes config.json, weights and tokenizer files there, which could be a user's."""
    claim_folder(Path(out), "--out", overwrite, lambda folder: (folder / SAVED_CONFIG).is_file(), None,
                 "`d3llm train`")


def train(config: TrainConfig, out: str | Path, command: list[str] | None = None,
          stop_at: int | None = None, progress: Progress | None = None, overwrite: bool = False) -> Path:
    """Train (or resume) into `out`; returns the folder of the final model. `stop_at`: end at
    that step of the recipe instead of its last. `progress(what, done, total)`: told each
    training step and validation problem (None: transformers' own progress bar and log lines).
    `out` must be new, empty or a run of ours (it holds train_config.yaml), unless `overwrite`."""
    if stop_at is not None and not 0 < stop_at <= config.steps:
        raise D3llmError(f"`--stop-at` must be in 1..{config.steps} (the recipe's steps), got {stop_at}")
    end = stop_at or config.steps
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise D3llmError(f"--out {out} exists and is not a folder; use another --out")
    claim_out(out, overwrite)
    if _is_first_process():
        remove_leftovers(out)  # what a kill during a write left (ours by name)
    version = code_version()  # the code this process runs, read before anything can change it
    saved = out / SAVED_CONFIG
    if saved.is_file() and _recipe(_saved_config(saved)) != _recipe(config.to_dict()):
        raise D3llmError(f"{out} holds a run with a different config ({saved}); use another --out")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # Everything the user's input can break (tokenizer, network, examples) is built before `out`
    # is written: a failed start leaves nothing that blocks the corrected command.
    tokenizer = tokenizer_for(config, out)  # deterministic: every rank builds the same one
    net = network_for(config, tokenizer)
    trained = with_lora(net, config.distill.lora_rank) if config.distill and config.distill.lora_rank else net
    if config.distill:
        examples = distill_examples(config.distill, resolve_model(config.init_from), tokenizer)
        collate_fn = collate_distill
    else:
        gen_length = config.gen_length if config.family not in ("ar", "block") else None  # block: whole blocks
        examples = build_examples(tokenizer, config.tasks, config.num_examples, "train", config.seed, gen_length,
                                  distinct=config.examples == "distinct")
        collate_fn = collate
    dataset = batches_by_length(examples, config.batch_size, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    if _is_first_process():
        write_atomic(saved, yaml.safe_dump(config.to_dict(), sort_keys=False))  # first: the run's marker
        if not (out / STARTED_FROM).is_file() and last_complete_checkpoint(out / CHECKPOINTS) is None:
            _record_origin(config, out)  # read now: a bundled name may later mean another model
        save_atomically(tokenizer.save_pretrained, out, last="tokenizer.json")  # what `tokenizer_for` looks for
    args = TrainingArguments(
        output_dir=str(out / CHECKPOINTS), max_steps=config.steps, per_device_train_batch_size=1,
        learning_rate=config.lr, lr_scheduler_type="cosine", warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, seed=config.seed,
        save_strategy="steps", save_steps=config.save_every, save_total_limit=2,
        logging_steps=10, report_to=[], dataloader_num_workers=0, remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(), ddp_backend=_ddp_backend(), ddp_find_unused_parameters=False,
        **({"disable_tqdm": True} if progress else {}),  # the caller draws the one bar
        bf16=config.precision == "bfloat16", activation_checkpointing=config.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},  # frozen embeddings (LoRA) still get gradients
        gradient_accumulation_steps=config.gradient_accumulation_steps, deepspeed=config.deepspeed,
    )
    clock = _Clock(out)
    validation = _ValidationCallback(config, net, tokenizer, out, clock, progress)
    trainer = _DiffusionTrainer(
        model=trained, args=args, train_dataset=dataset, facts=DiffusionLM(net).facts, distill=config.distill,
        objective=config.objective,
        data_collator=lambda items: collate_fn(items[0], tokenizer.pad_token_id),
        callbacks=[validation, _ClockCallback(clock)] + ([_StopAt(stop_at)] if stop_at else [])
        + ([_StepProgress(progress, end)] if progress else []),
    )
    if progress:
        trainer.remove_callback(PrinterCallback)  # its loss dicts on stdout: the bar shows the loss
    resume = last_complete_checkpoint(out / CHECKPOINTS)
    at = _step_of(resume) if resume else 0
    if at > end:
        raise D3llmError(f"{out} is already at step {at}, past `--stop-at` {end}")
    if resume:
        log.info("resuming from %s", resume)
    if trainer.is_world_process_zero():
        _log_invocation(out, resume, trainer.args.world_size, command or sys.argv, version)
    if at == end:  # already there (a stop before the end): load that step's weights, finish
        trainer._load_from_checkpoint(str(resume))  # the Trainer's own loader (plain or LoRA)
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        clock.save()
        final = validation.last
        if config.eval_every and final.get("step") != end:
            final = validation.record(end)
        if trained is not net:  # LoRA: fold the adapters into the weights, save a plain model
            net = trained.merge_and_unload()
        save_atomically(net.save_pretrained, out, last="model.safetensors")
        _write_provenance(out, config, command or sys.argv, final, clock.total(), net, version, stop_at)
    _leave_process_group()
    return out


def _leave_process_group() -> None:
    """Data-parallel ranks wait for the first one to finish saving, then close their group
    together: a rank that exits with its gloo group still open can abort in the C++ teardown
    ("terminate called without an active exception"), failing the whole launch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def save_atomically(save, out: Path, last: str) -> None:
    """`save(folder)` (a `save_pretrained`) into a temporary folder inside `out`, then each file
    written into `out` atomically, `last` at the end: a kill leaves every file old or new, never
    cut short, and `last` (the file whose presence says the set is there) only once all are in."""
    staging = Path(tempfile.mkdtemp(prefix=f".save{TEMP_MARK}", dir=out))
    try:
        save(staging)
        for file in sorted(staging.iterdir(), key=lambda f: (f.name == last, f.name)):
            write_atomic(out / file.name, file.read_bytes())
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def _saved_config(path: Path) -> dict:
    """A run's saved recipe with today's defaults filled in (a field added since compares equal
    when the run used its default). An empty or unreadable file (an older version's crash)
    raises, saying what to do."""
    try:
        data = load_yaml(read_text(path))
    except (D3llmError, yaml.YAMLError) as exc:
        data = exc
    if not isinstance(data, dict) or not data:
        raise D3llmError(f"{path} is damaged (empty or not a YAML mapping); restore it, or write the recipe you "
                         f"ran there (`d3llm train --config` of that run) and run again")
    try:
        return TrainConfig.from_dict(data, source=str(path)).to_dict()
    except D3llmError:
        return data


def _recipe(config: dict) -> dict:
    """What defines a run: everything but how many threads it happens to use (a run resumed
    with another `--threads` is the same run; runs.jsonl records each invocation's)."""
    return {k: v for k, v in config.items() if k != "threads"}


def _log_invocation(out: Path, resume: Path | None, world_size: int, command: list[str], version: str) -> None:
    """One line per run of the command in OUT/runs.jsonl: where it started, on how many processes."""
    row = {"start_step": _step_of(resume) if resume else 0, "world_size": world_size,
           "torch_threads": torch.get_num_threads(),
           "code_version": version, "command": " ".join(command),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    append_line(out / "runs.jsonl", json.dumps(row))


def _record_origin(config: TrainConfig, out: Path) -> None:
    """OUT/started_from.json: the provenance of the trained model `init_from` names, so a model
    trained in stages carries the records of every stage (nothing when it starts from scratch or
    from a model without records)."""
    if not config.init_from:
        return
    source = resolve_model(config.init_from) / "provenance.json"
    if source.is_file():
        write_atomic(out / STARTED_FROM, source.read_bytes())


def _write_provenance(
    out: Path, config: TrainConfig, command: list[str], final: dict, seconds: float, net, version: str,
    stop_at: int | None = None,
) -> None:
    runs = out / "runs.jsonl"
    provenance = {
        "command": " ".join(command),
        "seed": config.seed,
        "code_version": version,  # of the invocation that finished; every one is in runs.jsonl
        "invocations": read_jsonl(runs, "delete the damaged line (runs.jsonl is a log) and run again"),
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in net.parameters()),
        "torch_threads": torch.get_num_threads(),
        "final_validation": final,
        "stopped_at": stop_at,  # a step before the recipe's last, or null
        "config": config.to_dict(),
    }
    if (out / STARTED_FROM).is_file():  # the earlier stages, nested
        provenance["started_from"] = json.loads((out / STARTED_FROM).read_text())
    write_atomic(out / "provenance.json", json.dumps(provenance, indent=2))
