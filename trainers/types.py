"""Typed boundaries of the loop (the algorithms' own types are in :mod:`trainers.algo.types`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskData:
    train: list[dict]  # rows with prompt, answer, uid
    eval: list[dict]  # held-out rows
    name: str = "task"  # data set name for eval records
