"""HAPO (Huang et al. 2025, "History-Aware Policy Optimization"): a per-problem history h of correct lengths.

With ``x = n / h`` and ``f = cos(min(pi/2 * x, pi))``:
correct -> ``max(f, -0.7)``; incorrect -> ``min(f, 0)``; no history yet -> 0. The term is ``w * that`` and sits
on top of a separate correctness term. All rewards of a batch use the history from before the batch; afterwards
``h <- min(h, shortest correct length of the problem in this batch)`` ("min" mode) or a count-weighted running
mean of correct lengths ("mean" mode). Over several ranks the per-rank updates are gathered and reduced.

Example (min mode, h=100): correct n=50 -> cos(pi/4)=.707; correct n=100 -> 0; correct n=200 -> max(-1, -.7)=-.7;
wrong n=50 -> min(.707, 0)=0; wrong n=150 -> cos(3pi/4)=-.707.
"""
from __future__ import annotations

import math

import torch

from rewards.config import RewardConfig
from rewards.registry import register_term
from rewards.types import RewardInput


class HAPOHistory:
    def __init__(self, cfg: RewardConfig) -> None:
        if cfg.hapo.mode not in ("min", "mean"):
            raise ValueError(f"reward.hapo.mode={cfg.hapo.mode!r} is not one of ['mean', 'min']")
        self.mode = cfg.hapo.mode
        self.h: dict[str, float] = {}  # uid -> history length
        self.count: dict[str, int] = {}  # uid -> correct completions seen (mean mode)

    def lookup(self, uids: list[str]) -> torch.Tensor:
        """[B] history per row, NaN where the problem has none yet."""
        return torch.tensor([self.h.get(u, math.nan) for u in uids], dtype=torch.float64)

    def observe(self, inp: RewardInput) -> dict[str, tuple[float, float, int]]:
        """uid -> (shortest correct length, sum of correct lengths, number correct) of this batch."""
        out: dict[str, tuple[float, float, int]] = {}
        for m, n, ok in zip(inp.meta, inp.num_tokens.tolist(), inp.correct.tolist()):
            if not ok:
                continue
            lo, s, k = out.get(m["uid"], (math.inf, 0.0, 0))
            out[m["uid"]] = (min(lo, float(n)), s + float(n), k + 1)
        return out

    def apply(self, updates: list[dict[str, tuple[float, float, int]]]) -> None:
        merged: dict[str, tuple[float, float, int]] = {}
        for upd in updates:
            for uid, (lo, s, k) in upd.items():
                a, b, c = merged.get(uid, (math.inf, 0.0, 0))
                merged[uid] = (min(a, lo), b + s, c + k)
        for uid, (lo, s, k) in merged.items():
            if self.mode == "min":
                self.h[uid] = min(self.h.get(uid, math.inf), lo)
            else:
                c0 = self.count.get(uid, 0)
                self.h[uid] = (self.h.get(uid, 0.0) * c0 + s) / (c0 + k)
                self.count[uid] = c0 + k

    def state_dict(self) -> dict:
        return {"mode": self.mode, "h": dict(self.h), "count": dict(self.count)}

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"HAPO history was saved in mode {state['mode']!r}, config says {self.mode!r}")
        self.h, self.count = dict(state["h"]), {k: int(v) for k, v in state["count"].items()}


@register_term("hapo", state=HAPOHistory)
def hapo(inp: RewardInput, cfg: RewardConfig, state: HAPOHistory) -> torch.Tensor:
    h = state.lookup([m["uid"] for m in inp.meta])
    x = inp.num_tokens.to(torch.float64) / h
    f = torch.cos(torch.clamp(math.pi / 2 * x, max=math.pi))
    r = torch.where(inp.correct, f.clamp(min=cfg.hapo.correct_floor), f.clamp(max=0.0))
    r = torch.where(torch.isnan(h), torch.zeros_like(r), r)
    return (cfg.hapo.weight * r).to(torch.float32)
