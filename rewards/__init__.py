"""Rewards room: verifiers, registered reward terms and rollout transforms (stdlib + torch only; imports no other
room; math_verify is imported lazily by the ``math`` verifier)."""
from rewards import ceeh as _ceeh  # noqa: F401  (registers terms)
from rewards import correctness as _correctness  # noqa: F401
from rewards import decs as _decs  # noqa: F401
from rewards import dot as _dot  # noqa: F401  (registers the dot transform)
from rewards import graders as _graders  # noqa: F401  (registers the papers' graders as verifiers)
from rewards import hapo as _hapo  # noqa: F401
from rewards import length as _length  # noqa: F401
from rewards.config import RewardConfig
from rewards.decs_curriculum import DECSCurriculum
from rewards.registry import (STATE_TYPES, TERMS, TOKEN_LEVEL, TRANSFORMS, TRUNCATION, apply, compute, history,
                              make_states, needs_token_offsets, observe, register_term, register_transform)
from rewards.types import RewardInput, RewardOutput

__all__ = ["TERMS", "STATE_TYPES", "TOKEN_LEVEL", "TRANSFORMS", "TRUNCATION", "compute", "make_states", "observe",
           "apply", "history", "register_term", "register_transform", "needs_token_offsets", "DECSCurriculum", "RewardInput",
           "RewardOutput", "RewardConfig"]
