"""Training objectives. Each takes a `DiffusionLM` and a collated batch and returns a scalar.

- `masked_diffusion_loss` (LLaDA SFT form, also Dream-style with shifted logits): draw
  t ~ U(eps, 1) per sequence, mask each response token with probability t, cross-entropy on
  the masked tokens weighted by 1/t, normalised by the response length. Prompts are never
  masked. Because `DiffusionLM` returns aligned logits, the same code serves both families.
- `next_token_loss` (AR baseline): cross-entropy of every response token given its prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from d3llm.models import DiffusionLM

# LLaDA's lower bound on the mask ratio: keeps the 1/t weight finite.
MASK_RATIO_EPS = 1e-3


def response_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L) bool: positions that belong to the response (after the prompt, not padding)."""
    ids = batch["input_ids"]
    positions = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    return (positions >= batch["prompt_len"].unsqueeze(1)) & batch["attention_mask"].bool()


def masked_diffusion_loss(
    model: DiffusionLM, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
) -> torch.Tensor:
    ids = batch["input_ids"]  # (B, L)
    in_response = response_mask(batch)
    t = MASK_RATIO_EPS + (1 - MASK_RATIO_EPS) * torch.rand(ids.shape[0], 1, generator=generator)
    masked = in_response & (torch.rand(ids.shape, generator=generator) < t)
    noisy = torch.where(masked, model.facts.mask_token_id, ids)
    logits = model(noisy, attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")  # (B, L)
    per_seq = (ce * masked / t).sum(1) / in_response.sum(1).clamp(min=1)
    return per_seq.mean()


def next_token_loss(model: DiffusionLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    logits = model(ids, attention_mask=batch["attention_mask"]).logits  # aligned: [i] predicts ids[i]
    in_response = response_mask(batch)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")
    return (ce * in_response).sum() / in_response.sum().clamp(min=1)
