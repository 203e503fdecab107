"""Token scoring and selection: which masked positions an iteration commits.

`score` turns logits into a proposed token, its probability and the entropy of the predicted
distribution at every position. `select` is the strategy (`DecodeConfig.strategy`):

- `topk`: in the current block (the first fully-active block with masks), the
  `tokens_per_step` positions with the most probable proposals (LLaDA vanilla), with the
  lowest entropy (`rank_by="entropy"`, Dream's teacher rule), or the leftmost
  (`rank_by="position"`: left to right inside the block);
- `confidence`: every created-block position whose proposal has p >= threshold (Fast-dLLM);
- `entropy`: every created-block position with H <= threshold nats (dParallel, d3LLM).

Threshold strategies add forced progress so every iteration commits something: with
`forcing="block"` the best position of the current block when it got nothing, with
`forcing="global"` always the best candidate anywhere (the authors' LLaDA code).
All of it is batched tensor work: no Python loop over rows or tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from d3llm.decode.config import DecodeConfig


@dataclass
class Scores:
    tokens: torch.Tensor  # (B, n) proposed token per position
    confidence: torch.Tensor  # (B, n) probability of the proposed token
    entropy: torch.Tensor  # (B, n) entropy of the predicted distribution, nats


def score(
    logits: torch.Tensor, where: torch.Tensor | None, temperature: float, generator: torch.Generator | None,
    never: int | None = None,
) -> Scores:
    """(B, n, V) logits -> per-position proposal, its probability and the entropy (float32).
    Token `never` (the mask token) is never proposed (committing it would leave the position
    masked forever): the proposal is the best other token; its probability and the entropy
    are those of the full distribution, as the reference decoders compute them.

    Only positions in `where` (B, n) are scored (a softmax over a 126k vocabulary is not free);
    the others get token 0, confidence -1 and entropy +inf, which no strategy selects."""
    if where is None:
        where = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    at = where.nonzero(as_tuple=True)  # once: the same positions are read and written below
    picked = logits[at].float()  # (M, V)
    log_probs = torch.log_softmax(picked, dim=-1)
    probs = log_probs.exp()
    entropy = -(probs * log_probs).sum(-1)
    proposable = picked if never is None else picked.index_fill(-1, torch.tensor([never], device=picked.device),
                                                                float("-inf"))
    if temperature > 0 and len(picked):
        tokens = torch.multinomial(torch.softmax(proposable / temperature, dim=-1), 1, generator=generator)[:, 0]
    else:
        tokens = proposable.argmax(-1)
    confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    shape, device = where.shape, logits.device
    out_tokens = torch.zeros(shape, dtype=torch.long, device=device)
    out_conf = torch.full(shape, -1.0, device=device)
    out_entropy = torch.full(shape, float("inf"), device=device)
    out_tokens[at], out_conf[at], out_entropy[at] = tokens, confidence, entropy
    return Scores(out_tokens, out_conf, out_entropy)


def _best(values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: the single highest value among `allowed` in each row that has one."""
    masked = torch.where(allowed, values, float("-inf"))
    best = torch.zeros_like(allowed).scatter_(1, masked.argmax(1, keepdim=True), True)
    return best & allowed


def current_block(candidates: torch.Tensor, fully_active: torch.Tensor, block_of: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: candidates in each row's first fully-active block that still has any."""
    eligible = candidates & fully_active
    none = torch.iinfo(block_of.dtype).max  # above every block id: a row without eligible positions
    first = torch.where(eligible, block_of, none).min(1, keepdim=True).values  # (B, 1)
    return eligible & (block_of == first)


def select(
    s: Scores, candidates: torch.Tensor, fully_active: torch.Tensor, block_of: torch.Tensor, config: DecodeConfig
) -> torch.Tensor:
    """(B, n) bool: positions to commit now. `candidates`: masked positions of created blocks;
    `fully_active`: per position, whether its block is fully active; `block_of`: (n,) block ids."""
    target = current_block(candidates, fully_active, block_of)
    if config.strategy == "topk":
        if config.rank_by == "position":
            goodness = -torch.arange(target.shape[1], device=target.device, dtype=torch.float32).expand_as(target)
        else:
            goodness = s.confidence if config.rank_by == "confidence" else -s.entropy
        ranked = torch.where(target, goodness, float("-inf"))
        k = min(config.tokens_per_step, ranked.shape[1])
        top = ranked.topk(k, dim=1).indices
        return torch.zeros_like(target).scatter_(1, top, True) & target
    if config.strategy == "entropy":
        goodness, chosen = -s.entropy, s.entropy <= config.threshold
    else:
        goodness, chosen = s.confidence, s.confidence >= config.threshold
    chosen = chosen & candidates
    if config.forcing == "global":
        return chosen | _best(goodness, candidates)
    starved = ~(chosen & target).any(1, keepdim=True)
    return chosen | (_best(goodness, target) & starved)
