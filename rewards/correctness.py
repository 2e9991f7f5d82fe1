"""Correctness term: ``r_i = correct`` when the verifier accepted completion i, else ``incorrect``."""
from __future__ import annotations

import torch

from rewards.config import RewardConfig
from rewards.registry import register_term
from rewards.types import RewardInput


@register_term("correctness")
def correctness(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """Example: verdicts [True, False] with correct=1, incorrect=0 -> [1.0, 0.0]."""
    c = cfg.correctness
    return torch.where(inp.correct, torch.tensor(c.correct), torch.tensor(c.incorrect))
