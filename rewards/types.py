"""What the rewards room consumes and produces. Shapes: B = completions in the batch, T = completion tokens."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RewardInput:
    completions: list[str]  # [B] decoded completion texts
    num_tokens: torch.Tensor  # [B] long: completion tokens incl. a sampled EOS; = the cap when truncated
    truncated: torch.Tensor  # [B] bool: cut at the completion cap
    group_ids: torch.Tensor  # [B] long: rows sharing a prompt share an id
    meta: list[dict]  # [B] per-row problem data: at least "answer" and "uid"
    token_offsets: list[list[int]] | None = None  # [B][T] char offset where each token starts (token-level terms)
    correct: torch.Tensor | None = None  # [B] bool: verifier verdicts; filled by rewards.compute before any term runs

    def __post_init__(self) -> None:
        b = len(self.completions)
        for name in ("num_tokens", "truncated", "group_ids"):
            t = getattr(self, name)
            if t.shape != (b,):
                raise ValueError(f"RewardInput.{name} has shape {tuple(t.shape)}, expected ({b},)")
        if len(self.meta) != b:
            raise ValueError(f"RewardInput.meta has {len(self.meta)} rows, expected {b}")


@dataclass(frozen=True)
class RewardOutput:
    total: torch.Tensor  # [B] float: weighted sum of the sequence-level terms
    correct: torch.Tensor  # [B] bool: verifier verdicts (acc/* metrics)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] float, unweighted
    token_rewards: torch.Tensor | None = None  # [B,T] float: token-level rewards, when a token-level term ran
    input: RewardInput | None = None  # the verified input (``correct`` filled), for state updates
