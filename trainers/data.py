"""Prompt sources: which problems each rank rolls out at each step, deterministically from the seed.

Rows are dicts with at least ``prompt``, ``answer`` and ``uid``. Epoch e visits the training rows in a
permutation seeded by (seed, e); step s takes the global slice ``[s*P, (s+1)*P)`` of that endless stream and
rank r its r-th share, so a run's data order depends only on (seed, step) and resumes exactly.
"""
from __future__ import annotations

import random

from rollout.types import Prompt


def to_prompts(rows: list[dict], tokenizer) -> list[Prompt]:
    """Tokenize rows once; ``meta`` carries everything but the prompt text."""
    out = []
    for i, row in enumerate(rows):
        for key in ("prompt", "answer", "uid"):
            if key not in row:
                raise ValueError(f"data row {i} has no {key!r} field (fields: {sorted(row)})")
        ids = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        out.append(Prompt(uid=str(row["uid"]), token_ids=ids, meta={k: v for k, v in row.items() if k != "prompt"}))
    return out


class PromptStream:
    def __init__(self, prompts: list[Prompt], per_step: int, seed: int) -> None:
        if not prompts:
            raise ValueError("the training set is empty")
        self.prompts, self.per_step, self.seed = prompts, per_step, seed
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            order = list(range(len(self.prompts)))
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
            self._perm_cache = {epoch: order}
        return self._perm_cache[epoch]

    def global_batch(self, step: int) -> list[Prompt]:
        """The ``per_step`` prompts of step ``step`` (0-based) across all ranks; wraps over epochs."""
        n = len(self.prompts)
        out = []
        for k in range(step * self.per_step, (step + 1) * self.per_step):
            out.append(self.prompts[self._perm(k // n)[k % n]])
        return out

    def rank_batch(self, step: int, rank: int, world_size: int) -> list[Prompt]:
        share = self.per_step // world_size
        return self.global_batch(step)[rank * share:(rank + 1) * share]

    def epoch_of(self, step: int) -> float:
        return step * self.per_step / len(self.prompts)
