"""Rewards room: verifiers, registered reward terms and rollout transforms (stdlib + torch only; of the other rooms
it imports only the shared registry, ``laconic``; math_verify is imported lazily by the math graders).
``rewards.config`` imports every module of the room (each term and transform registers itself and declares its
config section) before it builds ``RewardConfig``."""
from rewards.config import RewardConfig
from rewards.decs_curriculum import DECSCurriculum
from rewards.registry import (STATE_TYPES, TERMS, TOKEN_LEVEL, TRANSFORMS, TRUNCATION, apply, compute, history,
                              make_states, needs_token_offsets, observe, register_term, register_transform)
from rewards.types import RewardInput, RewardOutput

__all__ = ["TERMS", "STATE_TYPES", "TOKEN_LEVEL", "TRANSFORMS", "TRUNCATION", "compute", "make_states", "observe",
           "apply", "history", "register_term", "register_transform", "needs_token_offsets", "DECSCurriculum", "RewardInput",
           "RewardOutput", "RewardConfig"]
