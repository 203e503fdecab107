"""`d3llm train`: train a model from a `TrainConfig` with transformers' `Trainer`.

The Trainer supplies the loop, AdamW, the schedule, gradient clipping, checkpoints with
optimizer and RNG state, and data parallelism under `torchrun` / `accelerate launch` (gloo on
CPU). We supply the objective (`objectives.py`), length-grouped batches, a validation-accuracy
callback and the output folder (`run_folder.py`: what it holds, how a resume reads it, and why
a kill at any moment loses nothing).

`stop_at` (`d3llm train --stop-at STEP`) ends a run early at a step of its recipe, with the
recipe's learning-rate schedule unchanged: for a run that cannot finish in the time there is.
The model written is that step's, and provenance.json says `stopped_at`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from d3llm.decode import preset
from d3llm.decode.config import validation_method
from d3llm.errors import D3llmError
from d3llm.eval.runner import evaluate
from d3llm.files import append_line, read_jsonl, remove_leftovers
from d3llm.models import DiffusionLM, LoadedModel, load_network, load_tokenizer, make_config, resolve_model
from d3llm.models.convert import ar_to_block, ar_to_dream, ar_to_llada
from d3llm.models.lm import DECODE_BLOCK_KEY
from d3llm.models.tokenizer import build_tokenizer
from d3llm.tasks import get_task
from d3llm.train.config import TrainConfig
from d3llm.train.data import build_examples, collate
from d3llm.train.distill import collate_distill, distill_examples, distill_loss, with_lora
from d3llm.train.objectives import block_diffusion_loss, masked_diffusion_loss, next_token_loss
from d3llm.train.run_folder import (
    CHECKPOINTS, Clock, check_same_recipe, claim_out, last_complete_checkpoint, log_invocation, save_atomically,
    start_run, step_of, write_provenance,
)
from d3llm.version import code_version

log = logging.getLogger(__name__)

TRAIN_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # TrainConfig.precision -> weights


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
        if self.distill is None:
            return self._family_loss(lm, inputs)
        progress = self.state.global_step / max(self.state.max_steps, 1)
        loss = distill_loss(lm, inputs, self.distill, progress)[0]
        if self.distill.replay:  # the teacher's own objective on fresh examples
            loss = loss + self.distill.replay * self._family_loss(lm, inputs["replay"])
        return loss

    def _family_loss(self, lm: DiffusionLM, inputs: dict) -> torch.Tensor:
        """The training objective of the model's family (the config's `objective`)."""
        if self.facts.family == "block":
            return block_diffusion_loss(lm, inputs, objective=self.objective)
        if self.facts.is_diffusion:
            return masked_diffusion_loss(lm, inputs, objective=self.objective)
        return next_token_loss(lm, inputs)


class _ValidationCallback(TrainerCallback):
    """Every `eval_every` steps (rank 0): validation accuracy per task -> curve.jsonl."""

    def __init__(self, config: TrainConfig, net, tokenizer, out: Path, clock: Clock,
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


class _ClockCallback(TrainerCallback):
    def __init__(self, clock: Clock):
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
    check_same_recipe(out, config)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # Everything the user's input can break (tokenizer, network, examples) is built before `out`
    # is written: a failed start leaves nothing that blocks the corrected command.
    tokenizer = tokenizer_for(config, out)  # deterministic: every rank builds the same one
    net = network_for(config, tokenizer)
    trained = with_lora(net, config.distill.lora_rank) if config.distill and config.distill.lora_rank else net
    dataset, collate_fn = _dataset(config, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    if _is_first_process():
        start_run(out, config, tokenizer)
    args = _arguments(config, out, progress)
    clock = Clock(out)
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
    at = step_of(resume) if resume else 0
    if at > end:
        raise D3llmError(f"{out} is already at step {at}, past `--stop-at` {end}")
    if resume:
        log.info("resuming from %s", resume)
    if trainer.is_world_process_zero():
        log_invocation(out, resume, trainer.args.world_size, command or sys.argv, version)
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
        write_provenance(out, config, command or sys.argv, final, clock.total(), net, version, stop_at)
    _leave_process_group()
    return out


def _dataset(config: TrainConfig, tokenizer) -> tuple[list[list[dict]], Callable]:
    """The recipe's batches (distillation's or a task's examples) and the collate function for them."""
    if not config.distill:
        return _batches(config, _task_examples(config, tokenizer)), collate
    examples = distill_examples(config.distill, resolve_model(config.init_from), tokenizer)
    if config.distill.replay:
        return _with_replay(_batches(config, examples), _batches(config, _task_examples(config, tokenizer)))
    return _batches(config, examples), collate_distill


def _task_examples(config: TrainConfig, tokenizer) -> list[dict]:
    """`num_examples` training examples of the recipe's `tasks`, drawn as its `examples` says."""
    gen_length = config.gen_length if config.family not in ("ar", "block") else None  # block: whole blocks
    return build_examples(tokenizer, config.tasks, config.num_examples, "train", config.seed, gen_length,
                          distinct=config.examples == "distinct")


def _batches(config: TrainConfig, examples: list[dict]) -> list[list[dict]]:
    return batches_by_length(examples, config.batch_size, config.seed)


def _with_replay(distill_batches: list[list[dict]], replay: list[list[dict]]) -> tuple[list, Callable]:
    """Distillation batches, each paired with a batch of the recipe's task examples for the
    teacher's objective (`distill.replay`): as many pairs as the longer list, so every step of a
    run shorter than `num_examples / batch_size` sees new task examples."""
    if not replay:
        raise D3llmError("`distill.replay` needs task examples to rehearse, and `num_examples` split over `tasks` "
                         "gave none; raise `num_examples`")
    pairs = [(distill_batches[i % len(distill_batches)], replay[i % len(replay)])
             for i in range(max(len(distill_batches), len(replay)))]

    def collate_pair(pair, pad_token_id):
        return {**collate_distill(pair[0], pad_token_id), "replay": collate(pair[1], pad_token_id)}

    return pairs, collate_pair


def _arguments(config: TrainConfig, out: Path, progress: Progress | None) -> TrainingArguments:
    """The Trainer's settings for the recipe: checkpoints in OUT/checkpoints, a cosine schedule."""
    return TrainingArguments(
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


def _leave_process_group() -> None:
    """Data-parallel ranks wait for the first one to finish saving, then close their group
    together: a rank that exits with its gloo group still open can abort in the C++ teardown
    ("terminate called without an active exception"), failing the whole launch."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
