"""Rewards slice of the config: which terms make up the reward and their parameters."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CorrectnessConfig:
    verifier: str = "exact_integer"  # name in rewards.verifiers.VERIFIERS
    correct: float = 1.0  # reward of a verified-correct completion
    incorrect: float = 0.0  # reward of a wrong or unparseable completion


@dataclass
class RewardConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"correctness": 1.0})  # term name -> weight in the total
    correctness: CorrectnessConfig = field(default_factory=CorrectnessConfig)  # parameters of the correctness term
