"""Embedded synthetic reasoning tasks, looked up by name in :data:`TASKS`.

A task supplies disjoint seeded splits, a generator of reference (over-long) reasoning traces, and the name of
its verifier in ``rewards.verifiers.VERIFIERS``; everything else (base model, rollout, RL) is task-agnostic.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from recipes.tasks import arith


@dataclass(frozen=True)
class Task:
    name: str
    make_splits: Callable[[int, int, int], tuple[list[dict], list[dict]]]
    make_trace: Callable[[dict, random.Random], str]
    format_prompt: Callable
    verifier: str  # key in rewards.verifiers.VERIFIERS


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add ``task`` to :data:`TASKS`; a second task with the same name is an error, not a silent override."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    TASKS[task.name] = task
    return task


register(Task("arith", arith.make_splits, arith.make_trace, arith.format_prompt, "exact_integer"))
