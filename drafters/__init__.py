"""Drafters room: the speculator trained online from the RL loop's rollouts (torch + kernels only).

Its types are the contract the trainer and rollout rooms already speak; the drafter models arrive with the
adaptive-drafter work.
"""
from drafters.types import DrafterBatch, DrafterExport, DrafterStats

__all__ = ["DrafterBatch", "DrafterExport", "DrafterStats"]
