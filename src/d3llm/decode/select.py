"""Token scoring and selection: which masked positions an iteration commits.

`score` turns logits into a proposed token, its probability and the entropy of the predicted
distribution at every position. `select` applies the config's strategy (strategies.py) to those
scores: `TopK` commits its best positions of the current block; a `ThresholdStrategy` every
candidate that passes, plus forced progress (`forcing`, the authors' rules, checked against
their code in tests/equivalence/test_official_decoders.py): `block` commits the best position of
the current block when the block got nothing (the authors' Dream code); `block+global` also
always commits the best candidate anywhere, then applies the block rule to what is chosen so far
(the authors' LLaDA code, `get_transfer_index_entropy` and the loop around it).
All of it is batched tensor work: no Python loop over rows or tokens.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from d3llm.decode.strategies import Strategy, TopK


@dataclass
class Scores:
    tokens: torch.Tensor  # (B, n) proposed token per position
    confidence: torch.Tensor | None  # (B, n) probability of the proposed token (None: not asked for)
    entropy: torch.Tensor | None  # (B, n) entropy of the predicted distribution, nats (None: not asked for)

    def leftmost(self) -> torch.Tensor:
        """(B, n) a goodness that ranks positions left to right."""
        n = self.tokens.shape[1]
        return -torch.arange(n, device=self.tokens.device, dtype=torch.float32).expand(len(self.tokens), n)


def score(
    logits: torch.Tensor, where: torch.Tensor | None, temperature: float, generator: torch.Generator | None,
    never: int | None = None, reads: tuple[str, ...] = ("confidence", "entropy"),
) -> Scores:
    """(B, n, V) logits -> per-position proposal, its probability and the entropy (float32).
    Token `never` (the mask token) is never proposed (committing it would leave the position
    masked forever): the proposal is the best other token; its probability and the entropy
    are those of the full distribution, as the reference decoders compute them. Only the
    fields named in `reads` are computed (`Strategy.scores_read`); the others are None.

    Only positions in `where` (B, n) are scored (a softmax over a 126k vocabulary is not free);
    the others get token 0, confidence -1 and entropy +inf, which no strategy selects."""
    if where is None:
        where = torch.ones(logits.shape[:2], dtype=torch.bool, device=logits.device)
    at = where.nonzero(as_tuple=True)  # once: the same positions are read and written below
    picked = logits[at].float()  # (M, V)
    shape, device = where.shape, logits.device
    out_conf = out_entropy = probs = None
    if reads:
        log_probs = torch.log_softmax(picked, dim=-1)
        probs = log_probs.exp()
    if "entropy" in reads:
        out_entropy = torch.full(shape, float("inf"), device=device)
        out_entropy[at] = -(probs * log_probs).sum(-1)
    # `picked` is a copy, read above: the mask token's logit can be overwritten in place
    proposable = picked if never is None else picked.index_fill_(-1, _index(never, picked.device), float("-inf"))
    if temperature > 0 and len(picked):
        tokens = torch.multinomial(torch.softmax(proposable / temperature, dim=-1), 1, generator=generator)[:, 0]
    else:
        tokens = proposable.argmax(-1)
    if "confidence" in reads:
        out_conf = torch.full(shape, -1.0, device=device)
        out_conf[at] = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    out_tokens = torch.zeros(shape, dtype=torch.long, device=device)
    out_tokens[at] = tokens
    return Scores(out_tokens, out_conf, out_entropy)


@functools.lru_cache(maxsize=16)
def _index(token: int, device: torch.device) -> torch.Tensor:
    """(1,) `token`, made once per device (a tensor per `score` call costs as much as the fill)."""
    return torch.tensor([token], device=device)


def _best(values: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(B, n) bool: the single highest value among `allowed` in each row that has one."""
    masked = torch.where(allowed, values, float("-inf"))
    best = torch.zeros_like(allowed).scatter_(1, masked.argmax(1, keepdim=True), True)
    return best & allowed


def current_block(active: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """(B, 1) each row's current block: the first block among `blocks` (B, n) that has an
    `active` position (a masked position of a fully-active block); a block id above every real
    one where a row has none."""
    return blocks.masked_fill(~active, torch.iinfo(blocks.dtype).max).amin(1, keepdim=True)


def select(s: Scores, candidates: torch.Tensor, in_current: torch.Tensor, strategy: Strategy) -> torch.Tensor:
    """(B, n) bool: positions to commit now. `candidates`: the positions this iteration may commit;
    `in_current`: those of them in the row's current block (`current_block`), where `TopK`
    commits and forced progress goes."""
    goodness = strategy.goodness(s)
    if isinstance(strategy, TopK):
        ranked = torch.where(in_current, goodness, float("-inf"))
        top = ranked.topk(min(strategy.tokens_per_step, ranked.shape[1]), dim=1).indices
        return torch.zeros_like(in_current).scatter_(1, top, True) & in_current
    chosen = strategy.passes(s) & candidates
    if strategy.forcing == "block+global":
        chosen = chosen | _best(goodness, candidates)
    starved = ~(chosen & in_current).any(1, keepdim=True)
    return chosen | (_best(goodness, in_current) & starved)
