"""A training run's output folder: what `d3llm train` writes there and what a resume reads.

    OUT/
      config.json, model.safetensors, tokenizer.json ...   final model (a loadable folder)
      train_config.yaml     the resolved recipe
      provenance.json       command, seed, code version, training time, final metrics, and
                            `started_from`: the provenance of the `init_from` model (earlier stages)
      started_from.json     that provenance, read when the run first started
      curve.jsonl           validation accuracy against step and training seconds
      runs.jsonl            one line per invocation (start step, processes): resumes are visible
      train_seconds         training time summed over invocations
      checkpoints/          Trainer checkpoints (resume: run the same command again)

Crash safety (docs/files.md): every file a resume reads is written atomically (temp + fsync +
rename, `d3llm.files`), so a kill -9 at any moment leaves the old file or the new one; the
Trainer's own checkpoint files are checked on resume (trainer_state.json parses, the weights'
sizes match their header, the torch files are whole archives) and a damaged checkpoint is
removed in favour of the one before it. A folder that holds files but no train_config.yaml is
not a run of ours and is refused unless `overwrite`.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch
import yaml

from d3llm.errors import D3llmError
from d3llm.files import (
    TEMP_MARK, append_line, claim_folder, read_json, read_jsonl, read_text, safetensors_header, write_atomic,
)
from d3llm.models import resolve_model
from d3llm.train.config import TrainConfig, load_yaml

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STARTED_FROM = "started_from.json"
SAVED_CONFIG = "train_config.yaml"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def claim_out(out: Path, overwrite: bool = False) -> None:
    """Refuse (unless `overwrite`) an output folder holding files but no run of ours: the
    trainer writes config.json, weights and tokenizer files there, which could be a user's."""
    claim_folder(Path(out), "--out", overwrite, lambda folder: (folder / SAVED_CONFIG).is_file(), None,
                 "`d3llm train`")


def check_same_recipe(out: Path, config: TrainConfig) -> None:
    """Refuse a run of another recipe in `out` (a resume must train what the run started)."""
    saved = out / SAVED_CONFIG
    if saved.is_file() and _recipe(_saved_config(saved)) != _recipe(config.to_dict()):
        raise D3llmError(f"{out} holds a run with a different config ({saved}); use another --out")


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


def start_run(out: Path, config: TrainConfig, tokenizer) -> None:
    """The files a run writes before training (rank 0): the recipe, first (the run's marker);
    the provenance of `init_from` when no checkpoint exists yet; the tokenizer."""
    write_atomic(out / SAVED_CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))
    if not (out / STARTED_FROM).is_file() and last_complete_checkpoint(out / CHECKPOINTS) is None:
        _record_origin(config, out)  # read now: a bundled name may later mean another model
    save_atomically(tokenizer.save_pretrained, out, last="tokenizer.json")  # what `tokenizer_for` looks for


def _record_origin(config: TrainConfig, out: Path) -> None:
    """OUT/started_from.json: the provenance of the trained model `init_from` names, so a model
    trained in stages carries the records of every stage (nothing when it starts from scratch or
    from a model without records)."""
    if not config.init_from:
        return
    source = resolve_model(config.init_from) / "provenance.json"
    if source.is_file():
        write_atomic(out / STARTED_FROM, source.read_bytes())


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
        found.append((step_of(ckpt), ckpt))
    return max(found)[1] if found else None


def checkpoint_problem(ckpt: Path) -> str | None:
    """What is missing or damaged in a Trainer checkpoint, or None when a resume can read it."""
    try:
        state = read_json(ckpt / "trainer_state.json")
        if not isinstance(state, dict) or state.get("global_step") != step_of(ckpt):
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


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def log_invocation(out: Path, resume: Path | None, world_size: int, command: list[str], version: str) -> None:
    """One line per run of the command in OUT/runs.jsonl: where it started, on how many processes."""
    row = {"start_step": step_of(resume) if resume else 0, "world_size": world_size,
           "torch_threads": torch.get_num_threads(),
           "code_version": version, "command": " ".join(command),
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    append_line(out / "runs.jsonl", json.dumps(row))


def write_provenance(
    out: Path, config: TrainConfig, command: list[str], final: dict, seconds: float, net, version: str,
    stop_at: int | None = None,
) -> None:
    """OUT/provenance.json: how the final model was made (every invocation, the final validation,
    the recipe, the earlier stages' provenance nested)."""
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


class Clock:
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
