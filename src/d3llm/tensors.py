"""Small tensor helpers shared by decode/ and train/ (no model code)."""

from __future__ import annotations

import torch


def first_index(where: torch.Tensor) -> torch.Tensor:
    """(B,) index of the first True in each row of `where` (B, n); n for a row without one."""
    n = where.shape[1]
    return torch.where(where, torch.arange(n, device=where.device), n).min(1).values
