"""Rewards room: registered reward terms and verifiers (stdlib + torch only; imports no other room)."""
from rewards import correctness as _correctness  # noqa: F401  (registers the term)
from rewards.config import CorrectnessConfig, RewardConfig
from rewards.registry import TERMS, compute, register_term
from rewards.types import RewardInput, RewardOutput

__all__ = ["TERMS", "compute", "register_term", "RewardInput", "RewardOutput", "RewardConfig", "CorrectnessConfig"]
