"""Training objectives. Each takes a `DiffusionLM` and a collated batch and returns a scalar.

- `masked_diffusion_loss` (masked-diffusion SFT, LLaDA and Dream alike): draw a mask ratio t
  per sequence, mask response tokens with probability t, cross-entropy on the masked tokens.
  Prompts are never masked. Because `DiffusionLM` returns aligned logits, the same code serves
  both families. `DiffusionObjective` says how t is drawn, which tokens may be masked, and how
  the cross-entropy is averaged (see its fields and docs/teacher-training.md).
- `block_diffusion_loss` (the `block` family, adapted from AR as Fast-dLLM v2 is): the clean
  sequence and two noisy copies of the response with complementary masks in one forward under
  a block-causal mask; each response token is predicted exactly once, AR-shifted.
- `next_token_loss` (AR baseline): cross-entropy of every response token given its prefix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from d3llm.errors import D3llmError
from d3llm.models import DiffusionLM
from d3llm.models.block import as_attention_mask, block_ids

# LLaDA's lower bound on the mask ratio: keeps the 1/t weight finite.
MASK_RATIO_EPS = 1e-3


@dataclass(frozen=True)
class DiffusionObjective:
    """How `masked_diffusion_loss` masks and weighs (the `objective:` block of a recipe).

    The defaults are LLaDA's SFT loss."""

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
    # In those rows, how far after the cut the ratio t applies: None = to the end of the
    # response; w = the w tokens after the cut, every later token masked (what a model decoded
    # left to right in blocks of w sees: the blocks after the current one are all masks). A
    # result digit then never has a clean copy of itself in view (docs/teacher-training.md).
    prefix_window: int | None = None

    def __post_init__(self) -> None:
        if self.weighting not in ("inverse_t", "token_mean"):
            raise D3llmError(f"`objective.weighting` must be inverse_t or token_mean, got {self.weighting!r}")
        if self.t_sampling not in ("uniform", "stratified"):
            raise D3llmError(f"`objective.t_sampling` must be uniform or stratified, got {self.t_sampling!r}")
        if not 0 < self.t_min <= self.t_max <= 1:
            raise D3llmError(f"need 0 < `objective.t_min` <= `objective.t_max` <= 1, got {self.t_min}, {self.t_max}")
        if not 0 <= self.prefix_rows <= 1:
            raise D3llmError(f"`objective.prefix_rows` must be in [0, 1], got {self.prefix_rows}")
        if self.prefix_window is not None and (isinstance(self.prefix_window, bool)
                                               or not isinstance(self.prefix_window, int) or self.prefix_window < 1):
            raise D3llmError(f"`objective.prefix_window` must be a positive integer or null, got {self.prefix_window!r}")


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maskable, always): (B, L) bool each. Maskable: the response, except, in `prefix_rows` of
    the rows, a clean prefix of it. The cut is uniform over the response's content: up to and
    including its first `eos_token_id` (a canvas padded with EOS would otherwise put most cuts
    in the padding). Always: the positions masked whatever t is (`prefix_window`)."""
    in_response = response_mask(batch)
    if objective.prefix_rows == 0:
        return in_response, torch.zeros_like(in_response)
    rows, width = in_response.shape
    content = in_response
    if eos_token_id is not None:
        eos = (batch["input_ids"] == eos_token_id) & in_response
        content = in_response & ((eos.cumsum(1) - eos.long()) == 0)  # up to the first EOS
    device = in_response.device  # random draws on the generator's device (the CPU), then moved
    cut_rows = torch.rand(rows, generator=generator).to(device) < objective.prefix_rows
    cut = batch["prompt_len"] + (torch.rand(rows, generator=generator).to(device) * content.sum(1)).long()
    positions = torch.arange(width, device=device).unsqueeze(0)
    start = torch.where(cut_rows, cut, batch["prompt_len"]).unsqueeze(1)
    maskable = in_response & (positions >= start)
    if objective.prefix_window is None:
        return maskable, torch.zeros_like(maskable)
    beyond = cut_rows.unsqueeze(1) & (positions >= start + objective.prefix_window)
    return maskable, maskable & beyond


def masked_diffusion_loss(
    model: DiffusionLM,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    objective: DiffusionObjective | None = None,  # None: the defaults (LLaDA's loss)
) -> torch.Tensor:
    objective = objective or DiffusionObjective()
    ids = batch["input_ids"]  # (B, L)
    maskable, always = maskable_positions(objective, batch, generator, model.facts.eos_token_id)
    t = sample_mask_ratio(objective, ids.shape[0], generator).to(ids.device)  # (B, 1)
    masked = always | (maskable & (torch.rand(ids.shape, generator=generator).to(ids.device) < t))
    noisy = torch.where(masked, model.facts.mask_token_id, ids)
    logits = model(noisy, attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")  # (B, L)
    if objective.weighting == "token_mean":
        return (ce * masked).sum() / masked.sum().clamp(min=1)
    per_seq = (ce * masked / t).sum(1) / response_mask(batch).sum(1).clamp(min=1)
    return per_seq.mean()


def block_diffusion_loss(
    model: DiffusionLM,
    batch: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    objective: DiffusionObjective | None = None,  # t_min, t_max, t_sampling apply
) -> torch.Tensor:
    """Block-diffusion loss with complementary masks (Fast-dLLM v2, Wu et al. 2025, section 3;
    docs/block-diffusion.md). One sequence per example, `[clean canvas | noisy copy A | noisy
    copy B]`: A masks each response token with probability t, B masks exactly the others. The
    clean columns attend block-causally to clean columns; a noisy block attends to the clean
    blocks before it and to itself (in its own copy). With the AR shift, token j of a block is
    predicted by the column before it in the same noisy copy, and the first token of a block by
    the last clean column before it (the AR prediction). Each response token is masked in one
    copy, so the mean over masked tokens is the mean over the response (trailing EOS included:
    the response is padded with EOS to whole blocks, which is what the decoder sees)."""
    objective = objective or DiffusionObjective(weighting="token_mean")
    k, eos, device = model.facts.block_size, model.facts.eos_token_id, batch["input_ids"].device
    prompt_len = batch["prompt_len"].to(device)
    length = batch["attention_mask"].sum(1)
    whole_blocks = -(-(length - prompt_len) // k) * k  # (B,) each response padded to whole blocks
    n = int(whole_blocks.max())
    clean, clean_valid = _padded_to_blocks(batch, prompt_len + whole_blocks, int((prompt_len + n).max()), eos)
    width = clean.shape[1]
    j = torch.arange(n, device=device)
    response_cols = prompt_len.unsqueeze(1) + j  # (B, n) canvas column of response position j
    valid = j < whole_blocks.unsqueeze(1)
    target = clean.gather(1, response_cols)
    t = sample_mask_ratio(objective, len(clean), generator).to(device)
    in_a = valid & (torch.rand(valid.shape, generator=generator).to(device) < t)
    in_b = valid & ~in_a
    mask_id = model.facts.mask_token_id
    inputs = torch.cat([clean, torch.where(in_a, mask_id, target), torch.where(in_b, mask_id, target)], 1)
    positions = torch.cat([torch.arange(width, device=device).expand(len(clean), -1), response_cols, response_cols], 1)
    clean_ids = block_ids(width, prompt_len, k, device)  # (B, width): prompt one block per column
    mask = _complementary_block_mask(clean_ids, clean_valid, j // k, valid)
    net = getattr(model.net, "module", model.net)  # DDP-wrapped or not
    raw = model.net(input_ids=inputs, attention_mask=as_attention_mask(mask, net.config, model.dtype),
                    position_ids=positions).logits  # (B, width + 2n, V), shifted
    first_of_block = (j % k == 0).unsqueeze(0)
    loss, count = 0.0, 0
    for copy, masked in enumerate((in_a, in_b)):
        source = torch.where(first_of_block, response_cols - 1, width + copy * n + j - 1)  # (B, n)
        logits = raw.gather(1, source.unsqueeze(-1).expand(-1, -1, raw.shape[-1]))
        ce = F.cross_entropy(logits.transpose(1, 2).float(), target, reduction="none")
        loss, count = loss + (ce * masked).sum(), count + masked.sum()
    return loss / count.clamp(min=1)


def _padded_to_blocks(batch, end, width, eos_id) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, valid), at least `width` wide: each row's response padded with EOS up to its `end`
    (whole blocks), then invalid columns."""
    ids, attention = batch["input_ids"], batch["attention_mask"].bool()
    width = max(width, ids.shape[1])
    cols = torch.arange(width, device=ids.device).unsqueeze(0)
    out = torch.full((len(ids), width), eos_id, dtype=ids.dtype, device=ids.device)
    out[:, : ids.shape[1]] = torch.where(attention, ids, eos_id)
    return out, cols < end.unsqueeze(1)


def _complementary_block_mask(clean_ids, clean_valid, noisy_ids, noisy_valid) -> torch.Tensor:
    """(B, 1, W + 2n, W + 2n) bool for `[clean | copy A | copy B]` (see block_diffusion_loss)."""
    rows, width, n = clean_ids.shape[0], clean_ids.shape[1], noisy_ids.shape[0]
    noisy_ids = noisy_ids.expand(rows, -1)
    clean_to_clean = (clean_ids.unsqueeze(1) <= clean_ids.unsqueeze(2)) & clean_valid.unsqueeze(1)
    noisy_to_clean = (clean_ids.unsqueeze(1) < noisy_ids.unsqueeze(2)) & clean_valid.unsqueeze(1)
    same_block = (noisy_ids.unsqueeze(1) == noisy_ids.unsqueeze(2)) & noisy_valid.unsqueeze(1)
    none = torch.zeros(rows, n, n, dtype=torch.bool, device=clean_ids.device)
    mask = torch.cat([
        torch.cat([clean_to_clean, torch.zeros(rows, width, 2 * n, dtype=torch.bool, device=clean_ids.device)], 2),
        torch.cat([noisy_to_clean, same_block, none], 2),
        torch.cat([noisy_to_clean, none, same_block], 2),
    ], 1)
    return (mask | torch.eye(width + 2 * n, dtype=torch.bool, device=mask.device)).unsqueeze(1)


def next_token_loss(model: DiffusionLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    ids = batch["input_ids"]
    logits = model(ids, attention_mask=batch["attention_mask"]).logits  # aligned: [i] predicts ids[i]
    in_response = response_mask(batch)
    ce = F.cross_entropy(logits.transpose(1, 2).float(), ids, reduction="none")
    return (ce * in_response).sum() / in_response.sum().clamp(min=1)
