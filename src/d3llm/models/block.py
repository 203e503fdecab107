"""Block-causal attention for the `block` family (block diffusion: Fast-dLLM v2, SDAR, LLaDA2.0).

A block model is an AR network whose response is generated a block at a time: attention is
bidirectional inside a block and causal between blocks, so every finished block has an exact
KV cache. Our convention (docs/block-diffusion.md):

- the prompt stays causal, as in the AR model it was adapted from: each prompt column is a
  block of its own;
- the response is cut into blocks of `d3llm_block_size` (config.json) from its first column;
- logits keep the AR shift (column i-1 predicts token i), as Fast-dLLM v2 does, so the first
  token of a block is the AR prediction of the last column of the finished block before it.

Every column gets a *block id*: prompt column c (of a canvas whose response starts at column
`start`) has id c - start (negative, one per column), response column c has (c - start) // k.
A query sees a key when the key's id is not larger than its own (and the key is not padding).
"""

from __future__ import annotations

import torch


def block_ids(length: int, start: int | torch.Tensor, block_size: int,
              device: torch.device | None = None) -> torch.Tensor:
    """Block id of each canvas column (see module docstring): (length,) for one response start
    (a left-padded decode canvas), (B, length) for a (B,) tensor of them (right-padded training rows)."""
    columns = torch.arange(length, device=device)
    columns = columns - (start.to(columns.device).unsqueeze(1) if isinstance(start, torch.Tensor) else start)
    return torch.where(columns < 0, columns, columns // block_size)


def block_causal_mask(query_ids: torch.Tensor, key_ids: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """(B, 1, Q, K) bool, True = attend: query ids (Q,) or (B, Q), key ids (K,) or (B, K),
    `key_valid` (B, K) (0 on padding). The diagonal of the last Q keys is always allowed, so a
    padding query still attends to something (its output is never used)."""
    q = query_ids if query_ids.dim() == 2 else query_ids.unsqueeze(0)
    k = key_ids if key_ids.dim() == 2 else key_ids.unsqueeze(0)
    allowed = (k.unsqueeze(1) <= q.unsqueeze(2)) & key_valid.bool().unsqueeze(1)  # (B, Q, K)
    n_q, n_k = allowed.shape[1], allowed.shape[2]
    own = torch.zeros(n_q, n_k, dtype=torch.bool, device=allowed.device)
    own[:, n_k - n_q :] = torch.eye(n_q, dtype=torch.bool, device=allowed.device)
    return (allowed | own).unsqueeze(1)


def as_attention_mask(mask: torch.Tensor, config, dtype: torch.dtype) -> torch.Tensor:
    """A bool mask in the form the network's attention takes as a ready 4D mask: bool for SDPA
    and flex, additive float (0 / dtype min) for the eager implementation."""
    if getattr(config, "_attn_implementation", "sdpa") != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
