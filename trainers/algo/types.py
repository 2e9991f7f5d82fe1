"""Typed inputs and outputs of the pure algorithms. Shapes: B = sequences, T = completion tokens."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class AdvantageInput:
    rewards: torch.Tensor  # [B] float: sequence rewards
    group_ids: torch.Tensor  # [B] long: rows sharing a prompt share an id
    mask: torch.Tensor  # [B,T] bool: valid completion tokens
    token_rewards: torch.Tensor | None = None  # [B,T] float: token-level rewards, when a term produced them
    values: torch.Tensor | None = None  # [B,T] float: critic values (PPO)
    all_sum: Callable[[torch.Tensor], torch.Tensor] | None = None  # sums a tensor over ranks (batch-wide statistics)


@dataclass(frozen=True)
class LossInput:
    logprobs: torch.Tensor  # [B,T] float: current policy log-probs of the sampled tokens (with grad)
    old_logprobs: torch.Tensor  # [B,T] float: log-probs of the policy that sampled (no grad)
    advantages: torch.Tensor  # [B,T] float
    mask: torch.Tensor  # [B,T] bool


@dataclass(frozen=True)
class LossOutput:
    per_token: torch.Tensor  # [B,T] float: loss per token (0 where mask is False)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B,T] per-token stats to aggregate
