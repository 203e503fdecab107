"""Training objectives. Each takes a `DiffusionLM` and a collated batch and returns a scalar.

- `masked_diffusion_loss` (masked-diffusion SFT, LLaDA and Dream alike): draw a mask ratio t
  per sequence, mask response tokens with probability t, cross-entropy on the masked tokens.
  Prompts are never masked. Because `DiffusionLM` returns aligned logits, the same code serves
  both families. `DiffusionObjective` says how t is drawn, which tokens may be masked, and how
  the cross-entropy is averaged (see its fields and docs/teacher-training.md).
- `next_token_loss` (AR baseline): cross-entropy of every response token given its prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from d3llm.errors import D3llmError
from d3llm.models import DiffusionLM

# LLaDA's lower bound on the mask ratio: keeps the 1/t weight finite.
MASK_RATIO_EPS = 1e-3


@dataclass(frozen=True)
class DiffusionObjective:
    """How `masked_diffusion_loss` masks and weighs (the `objective:` block of a recipe).

    The defaults are LLaDA's SFT loss, as every recipe before issue 12 used it."""

    # inverse_t: LLaDA's ELBO form, CE x 1/t summed per sequence / response length (Nie et al.
    #   2025, eq. 5). token_mean: plain mean CE over the batch's masked tokens (MaskGIT-style;
    #   no 1/t). On this project's arithmetic drills 1/t with t near 1e-3 weights a row ~1000x
    #   and, under gradient clipping, such rows steer the step (docs/teacher-training.md).
    weighting: Literal["inverse_t", "token_mean"] = "inverse_t"
    t_min: float = MASK_RATIO_EPS  # mask ratio t ~ U(t_min, t_max)
    t_max: float = 1.0
    # uniform: i.i.d. per row. stratified: the batch's t values are evenly spaced with one
    # random offset (MDLM's low-discrepancy sampler, Sahoo et al. 2024): same mean, less variance.
    t_sampling: Literal["uniform", "stratified"] = "uniform"
    # Share of rows masked like a left-to-right decoder sees them: clean up to a random
    # response position, masked with ratio t after it (semi-autoregressive masks, as block
    # diffusion and the teacher's own block-wise decoding order have it). 0 = uniform masks.
    prefix_rows: float = 0.0

    def __post_init__(self) -> None:
        if self.weighting not in ("inverse_t", "token_mean"):
            raise D3llmError(f"`objective.weighting` must be inverse_t or token_mean, got {self.weighting!r}")
        if self.t_sampling not in ("uniform", "stratified"):
            raise D3llmError(f"`objective.t_sampling` must be uniform or stratified, got {self.t_sampling!r}")
        if not 0 < self.t_min <= self.t_max <= 1:
            raise D3llmError(f"need 0 < `objective.t_min` <= `objective.t_max` <= 1, got {self.t_min}, {self.t_max}")
        if not 0 <= self.prefix_rows <= 1:
            raise D3llmError(f"`objective.prefix_rows` must be in [0, 1], got {self.prefix_rows}")


def response_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L) bool: positions that belong to the response (after the prompt, not padding)."""
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    return (positions >= batch["prompt_len"].unsqueeze(1)) & batch["attention_mask"].bool()


def sample_mask_ratio(objective: DiffusionObjective, rows: int, generator: torch.Generator | None) -> torch.Tensor:
    """(rows, 1) mask ratios in [t_min, t_max]."""
    u = torch.rand(rows, 1, generator=generator)
    if objective.t_sampling == "stratified":
        u = (u[:1] + torch.arange(rows).unsqueeze(1) / rows) % 1.0
    return objective.t_min + (objective.t_max - objective.t_min) * u


def maskable_positions(
    objective: DiffusionObjective,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None,
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """(B, L) bool: the response, except, in `prefix_rows` of the rows, a clean prefix of it.
    The cut is uniform over the response's content: up to and including its first
    `eos_token_id` (a canvas padded with EOS would otherwise put most cuts in the padding)."""
    in_response = response_mask(batch)
    if objective.prefix_rows == 0:
        return in_response
    rows, width = in_response.shape
    content = in_response
    if eos_token_id is not None:
        eos = (batch["input_ids"] == eos_token_id) & in_response
        content = in_response & ((eos.cumsum(1) - eos.long()) == 0)  # up to the first EOS
    device = in_response.device  # random draws on the generator's device (the CPU), then moved
    cut_rows = torch.rand(rows, generator=generator).to(device) < objective.prefix_rows
    cut = batch["prompt_len"] + (torch.rand(rows, generator=generator).to(device) * content.sum(1)).long()
    positions = torch.arange(width, device=device).unsqueeze(0)
    after_cut = positions >= torch.where(cut_rows, cut, batch["prompt_len"]).unsqueeze(1)
    return in_response & after_cut


def masked_diffusion_loss(
    model: DiffusionLM,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    objective: DiffusionObjective | None = None,  # None: the defaults (LLaDA's loss)
) -> torch.Tensor:
    objective = objective or DiffusionObjective()
    ids = batch["input_ids"]  # (B, L)
    maskable = maskable_positions(objective, batch, generator, model.facts.eos_token_id)
    t = sample_mask_ratio(objective, ids.shape[0], generator).to(ids.device)  # (B, 1)
    masked = maskable & (torch.rand(ids.shape, generator=generator).to(ids.device) < t)
    noisy = torch.where(masked, model.facts.mask_token_id, ids)
    logits = model(noisy, attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")  # (B, L)
    if objective.weighting == "token_mean":
        return (ce * masked).sum() / masked.sum().clamp(min=1)
    per_seq = (ce * masked / t).sum(1) / response_mask(batch).sum(1).clamp(min=1)
    return per_seq.mean()


def next_token_loss(model: DiffusionLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    logits = model(ids, attention_mask=batch["attention_mask"]).logits  # aligned: [i] predicts ids[i]
    in_response = response_mask(batch)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")
    return (ce * in_response).sum() / in_response.sum().clamp(min=1)
