"""Rewards room: verifiers and registered reward terms (stdlib + torch only; imports no other room)."""
from rewards import correctness as _correctness  # noqa: F401  (registers terms)
from rewards import decs as _decs  # noqa: F401
from rewards import hapo as _hapo  # noqa: F401
from rewards import length as _length  # noqa: F401
from rewards.config import RewardConfig
from rewards.registry import STATE_TYPES, TERMS, TOKEN_LEVEL, apply, compute, make_states, observe, register_term
from rewards.types import RewardInput, RewardOutput

__all__ = ["TERMS", "STATE_TYPES", "TOKEN_LEVEL", "compute", "make_states", "observe", "apply", "register_term", "RewardInput",
           "RewardOutput", "RewardConfig"]
