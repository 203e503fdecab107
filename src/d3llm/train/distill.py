"""Pseudo-trajectory distillation (docs/method.md section 2).

Each example is a response (the reference target) with the teacher's rank vector. Per batch:
a window size `k` from the window curriculum, a mask ratio `t` per example from the noise
curriculum, one window per example; inside the window the positions the teacher had not yet
decoded at the matching snapshot are masked (or, for the dParallel-style baseline, a random
fraction `t`); before the window is clean, after it is MASK. Loss:

    (CE + CE_complementary + w * H_certain) / 4

CE over the masked window positions; the complementary branch inverts the window's mask; the
certainty-forcing term is the entropy of softmax(logits / 0.5) over masked positions whose
argmax is already right. `DiffusionLM` returns aligned logits, so Dream's shift is handled.

Two deliberate differences from the authors' code, both documented in the method sheet's spirit:
the curricula run over training progress (`step / steps`, times the schedule's length for
the window), which equals the authors' fractional epoch when a run lasts `len(windows)`
epochs; and the window index is drawn over the `ceil(N / k)` windows that hold response
positions (the authors' `0..N//k` includes an empty window when `k` divides `N`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from d3llm.decode.config import default_method
from d3llm.errors import D3llmError
from d3llm.models import DiffusionLM, resolve_model
from d3llm.models.reading import read_json
from d3llm.tensors import first_index
from d3llm.train.config import MASKINGS, DistillSettings, TrainConfig  # noqa: F401  (re-exported)
from d3llm.train.data import collate
from d3llm.trajectory import store

# --- curricula ---------------------------------------------------------------------------


def window_size(settings: DistillSettings, progress: float) -> int:
    """Block size at training progress in [0, 1] (the schedule is spread over the run)."""
    schedule = settings.windows
    if not settings.progressive_window:
        return schedule[-1]
    e = min(max(progress, 0.0), 1.0) * len(schedule)
    i = min(math.floor(e), len(schedule) - 1)
    if i == len(schedule) - 1:
        return schedule[i]
    return int(schedule[i] + (e - i) * (schedule[i + 1] - schedule[i]))


def mask_ratios(settings: DistillSettings, progress: float, batch: int, generator=None) -> torch.Tensor:
    """(B,) mask ratios t ~ U(t_lo, t_max), the floor t_lo rising from t_min to t_max."""
    p = min(max(progress, 0.0), 1.0) if settings.progressive_noise else 0.0
    low = settings.t_min + p * (settings.t_max - settings.t_min)
    return low + (settings.t_max - low) * torch.rand(batch, generator=generator)


# --- masks -------------------------------------------------------------------------------


@dataclass
class WindowMasks:
    """(B, L) bool masks of one batch: the window, what is masked in it, and what follows it."""

    window: torch.Tensor
    masked: torch.Tensor  # window positions hidden in the main branch
    after: torch.Tensor  # response positions after the window (always MASK)


def window_masks(
    rank: torch.Tensor, prompt_len: torch.Tensor, response_len: torch.Tensor, k: int, t: torch.Tensor,
    masking: str = "trajectory", generator=None, index: torch.Tensor | None = None,
) -> WindowMasks:
    """Choose one window of size `k` per row and mask it.

    `rank` (B, L): the teacher's step for each response position (aligned with the sequence,
    anything outside the response ignored); `prompt_len`, `response_len`, `t`: (B,).
    Trajectory masking keeps the window positions the teacher had decoded by snapshot
    `(s - P) + floor((1 - t)(e - s))` and masks the rest; random masking masks each window
    position with probability t. `index` (B,) fixes each row's window instead of drawing it."""
    B, L = rank.shape
    r = torch.arange(L, device=rank.device).unsqueeze(0) - prompt_len.unsqueeze(1)  # response index, <0 in the prompt
    windows = (response_len + k - 1) // k  # windows holding response positions
    if index is None:
        index = (torch.rand(B, generator=generator).to(rank.device) * windows).long()
    j = torch.minimum(index, windows - 1)
    s = (j * k).unsqueeze(1)
    e = torch.minimum(s + k, response_len.unsqueeze(1))
    window = (r >= s) & (r < e)
    after = (r >= e) & (r < response_len.unsqueeze(1))
    if masking == "trajectory":
        decoded = torch.floor((1 - t).unsqueeze(1) * (e - s)).long()
        snapshot = torch.minimum(s + decoded, response_len.unsqueeze(1) - 1)
        masked = window & (rank > snapshot)
    else:
        masked = window & (torch.rand(B, L, generator=generator) < t.unsqueeze(1))
    return WindowMasks(window, masked, after)


def through_first_eos(ids: torch.Tensor, prompt_len: torch.Tensor, response_len: torch.Tensor,
                      eos_id: int, k: int) -> torch.Tensor:
    """(B,) response lengths cut after the block of `k` holding each row's first response EOS
    (unchanged for a row without one): the blocks an early-stopping block decoder decodes."""
    r = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0) - prompt_len.unsqueeze(1)
    is_eos = (ids == eos_id) & (r >= 0) & (r < response_len.unsqueeze(1))
    first = first_index(is_eos) - prompt_len  # past the response where a row has none
    return torch.minimum(response_len, (first // k + 1) * k)


# --- losses ------------------------------------------------------------------------------


def masked_ce(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the positions in `where` (0 when there are none)."""
    if not where.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits[where].float(), targets[where])


def certainty_entropy(logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean entropy of softmax(logits / temperature) over positions in `where` whose argmax is
    already the target (0 when there are none): pushes right answers to be confident."""
    picked = logits[where].float()
    right = picked.argmax(-1) == targets[where]
    if not right.any():
        return logits.sum() * 0.0
    log_q = torch.log_softmax(picked[right] / temperature, dim=-1)
    return -(log_q.exp() * log_q).sum(-1).mean()


def distill_loss(
    model: DiffusionLM, batch: dict[str, torch.Tensor], settings: DistillSettings, progress: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The distillation objective on one batch; returns the loss and its parts (for logging)."""
    ids, attention = batch["input_ids"], batch["attention_mask"]
    # A block model's window is its own block (aligned with the response start, as it decodes);
    # later blocks are invisible to it under the block-causal mask.
    k = model.facts.block_size or window_size(settings, progress)
    forward = functools.partial(model, attention_mask=attention, block_start=batch["prompt_len"])
    response_len = batch["response_len"]
    if settings.skip_eos_blocks:  # later blocks stay clean in the input: the block-causal mask hides them
        response_len = through_first_eos(ids, batch["prompt_len"], response_len, model.facts.eos_token_id, k)
    t = mask_ratios(settings, progress, ids.shape[0], generator)
    m = window_masks(batch["rank"], batch["prompt_len"], response_len, k, t, settings.masking, generator)
    mask_id = model.facts.mask_token_id
    logits = forward(torch.where(m.masked | m.after, mask_id, ids)).logits
    ce = masked_ce(logits, ids, m.masked)
    entropy = certainty_entropy(logits, ids, m.masked, settings.entropy_temperature)
    ce_rev = torch.zeros(())
    if settings.complementary:
        flipped = m.window & ~m.masked
        logits_rev = forward(torch.where(flipped | m.after, mask_id, ids)).logits
        ce_rev = masked_ce(logits_rev, ids, flipped)
        if settings.entropy_on_complementary:
            entropy = entropy + certainty_entropy(logits_rev, ids, flipped, settings.entropy_temperature)
    loss = (ce + ce_rev + settings.entropy_weight * entropy) / 4
    parts = {"ce": ce.item(), "ce_rev": ce_rev.item(), "entropy": entropy.item(), "window": k}
    return loss, parts


# --- data --------------------------------------------------------------------------------


def distill_examples(settings: DistillSettings, teacher_folder: Path, tokenizer) -> list[dict]:
    """Training examples from a trajectory folder, checked against the teacher being distilled."""
    rows, manifest = store.load(Path(settings.trajectories), settings.keep)
    if manifest["tokenizer_fingerprint"] != store.tokenizer_fingerprint(tokenizer):
        raise D3llmError(
            f"{settings.trajectories} was made with another tokenizer than the student's "
            f"(teacher {manifest['teacher']}); roll out with the teacher you distil"
        )
    if manifest["teacher_fingerprint"] != store.fingerprint(teacher_folder):
        raise D3llmError(
            f"{settings.trajectories} holds rollouts of {manifest['teacher']} (fingerprint "
            f"{manifest['teacher_fingerprint']}), not of {teacher_folder} ({store.fingerprint(teacher_folder)})"
        )
    return [
        {"input_ids": r["prompt_ids"] + r["target_ids"], "prompt_len": len(r["prompt_ids"]),
         "length": len(r["prompt_ids"]) + len(r["target_ids"]), "rank": r["rank"]}
        for r in rows
    ]


def collate_distill(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """`collate` plus the rank vectors aligned with the sequence (-1 outside the response)."""
    out = collate(batch, pad_token_id)
    rank = torch.full_like(out["input_ids"], -1)
    for row, ex in enumerate(batch):
        rank[row, ex["prompt_len"] : ex["prompt_len"] + len(ex["rank"])] = torch.tensor(ex["rank"])
    out["rank"] = rank
    out["response_len"] = torch.tensor([len(ex["rank"]) for ex in batch])
    return out


def with_lora(net, rank: int):
    """The network wrapped for LoRA on every attention and MLP projection (peft)."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    with warnings.catch_warnings():
        # peft 0.21 (the newest) reads transformers' deprecated `is_gradient_checkpointing`;
        # the FutureWarning is about peft's code, not ours. Drop this when peft stops.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(net, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0))


__all__ = [
    "DistillSettings", "WindowMasks", "certainty_entropy", "collate_distill", "distill_examples",
    "distill_loss", "mask_ratios", "masked_ce", "through_first_eos", "window_masks", "window_size", "with_lora",
]


def distill_config(teacher: str, trajectories: str, recipe: dict | None = None, overrides: dict | None = None):
    """The `TrainConfig` of a distillation run: the teacher's family and tokenizer, the tasks
    and canvas of the trajectory set, `recipe` (a YAML mapping) and then `overrides` on top.
    Override keys may name a `distill` setting (`masking`, `windows`, ...) or a top-level one."""
    manifest = store.read_manifest(Path(trajectories))
    family = read_json(resolve_model(teacher) / "config.json").get("d3llm_family", manifest["family"])
    raw = {"family": family, "eval_method": default_method(family),
           "gen_length": manifest["decode_config"]["max_new_tokens"]}
    if "imported_from" in manifest:  # the authors' prompts (d3llm.trajectory.official): no task of ours to validate on
        raw["eval_every"] = 0
    else:
        raw["tasks"] = {t: 1.0 for t in manifest["work"]["tasks"]}
    raw.update(recipe or {})
    raw.update(init_from=teacher, tokenizer_from=teacher)
    if not isinstance(raw.get("distill") or {}, dict):
        raise D3llmError(f"distill recipe: `distill` must be a mapping of distill settings, got {raw['distill']!r}")
    section = dict(raw.get("distill") or {}, trajectories=str(trajectories))
    distill_keys = {f.name for f in dataclasses.fields(DistillSettings)}
    for key, value in (overrides or {}).items():
        if key in distill_keys:
            section[key] = value
        else:
            raw[key] = value
    raw["distill"] = section
    return TrainConfig.from_dict(raw, source="distill recipe")
