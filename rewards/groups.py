"""Per-group statistics over rows that share ``group_ids`` (the completions of one prompt in this batch)."""
from __future__ import annotations

import torch


def group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[B] long index of each row's group in 0..G-1, and G."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    return inv, int(inv.max()) + 1 if inv.numel() else 0


def group_mean(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """[B] float64: the mean of ``values`` over each row's group.

    Example: values [1, 0, 1, 1], groups [0, 0, 1, 1] -> [.5, .5, 1, 1]."""
    inv, g = group_index(group_ids)
    v = values.to(torch.float64)
    total = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, v)
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, torch.ones_like(v))
    return (total / count.clamp(min=1))[inv]


def group_std(values: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """[B] float64: the sample standard deviation (n - 1 denominator) of each row's group; 0 for a group of one.

    Example: values [100, 100, 400], one group -> mean 200, std sqrt((1e4 + 1e4 + 4e4) / 2) = 173.2."""
    inv, g = group_index(group_ids)
    v = values.to(torch.float64)
    dev2 = (v - group_mean(v, group_ids)) ** 2
    ss = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, dev2)
    count = torch.zeros(g, dtype=torch.float64).index_add_(0, inv, torch.ones_like(v))
    return torch.sqrt(ss / (count - 1).clamp(min=1))[inv]
