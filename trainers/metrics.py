"""Step metrics: kept as tensors until one reduction per step; names are ``room/what``."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch


def length_stats(lengths: torch.Tensor, prefix: str) -> dict[str, float]:
    """mean / median / p90 / max of a [N] tensor of token counts."""
    x = lengths.to(torch.float64)
    if x.numel() == 0:
        return {f"{prefix}{k}": 0.0 for k in ("mean", "median", "p90", "max")}
    q = torch.quantile(x, torch.tensor([0.5, 0.9], dtype=torch.float64))
    return {f"{prefix}mean": float(x.mean()), f"{prefix}median": float(q[0]), f"{prefix}p90": float(q[1]),
            f"{prefix}max": float(x.max())}


class Timers:
    """Named wall-clock phases of one step: ``with timers("rollout"): ...`` -> ``time/rollout_s``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def as_metrics(self) -> dict[str, float]:
        return {f"time/{k}_s": v for k, v in self.seconds.items()}
