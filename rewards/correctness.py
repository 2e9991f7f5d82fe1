"""Correctness term: ``r_i = correct`` when the verifier accepted completion i, else ``incorrect``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rewards.registry import register_term
from rewards.types import RewardInput

if TYPE_CHECKING:
    from rewards.config import RewardConfig


@dataclass
class CorrectnessConfig:
    verifier: str = "exact_integer"  # name in rewards.verifiers.VERIFIERS, or a user one: "module:function" / "file.py:function"
    correct: float = 1.0  # reward of a verified-correct completion
    incorrect: float = 0.0  # reward of a wrong or unparseable completion


@register_term("correctness", config=CorrectnessConfig)
def correctness(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """Example: verdicts [True, False] with correct=1, incorrect=0 -> [1.0, 0.0]."""
    c = cfg.correctness
    return torch.where(inp.correct, torch.tensor(c.correct), torch.tensor(c.incorrect))
