"""HAPO (Huang et al. 2025, "History-Aware Policy Optimization"): a per-problem history h of correct lengths.
Released code: HCY123902/HAPO @c91ae3b6, ``utils.py`` ``compute_len_reward`` (cosine) and
``compute_len_reward_linear`` (linear), ``grpo_trainer.py`` ``HistroyTracker`` (the history).

``shape=cosine`` (default): with ``x = n / h`` and ``f = cos(min(pi/2 * x, pi))``:
correct -> ``max(f, -0.7)``; incorrect -> ``min(f, 0)``; no history yet -> 0.

``shape=linear`` (tolerance .1): correct -> ``1 - n/h`` below h, 0 in ``[h, 1.1 h)``, ``max(-(n - 1.1 h)/h, -0.7)``
from 1.1 h on; incorrect -> 0 below 1.1 h, ``max(-(n - 1.1 h)/h, -1)`` from 1.1 h on; no history yet -> 0.
Example (h = 100): correct n = 50 -> .5; 105 -> 0; 150 -> -.4; 200 -> -.7; wrong n = 50 -> 0; 150 -> -.4; 300 -> -1.

The history is read and seeded through :meth:`HAPOHistory.history` / :meth:`HAPOHistory.seed` (a run writes it to
``reward_history.json``; ``reward.history_file`` seeds a new run with it). The term sits on top of a separate
correctness term; its weight (HAPO's ``w_lr``) is the one in ``reward.terms``. All rewards of a batch use the history from before the batch; afterwards
``h <- min(h, shortest correct length of the problem in this batch)`` ("min" mode) or a count-weighted running
mean of correct lengths ("mean" mode). Over several ranks the per-rank updates are gathered and reduced.

Example (min mode, h=100): correct n=50 -> cos(pi/4)=.707; correct n=100 -> 0; correct n=200 -> max(-1, -.7)=-.7;
wrong n=50 -> min(.707, 0)=0; wrong n=150 -> cos(3pi/4)=-.707.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rewards.registry import register_term
from rewards.types import RewardInput

if TYPE_CHECKING:
    from rewards.config import RewardConfig


@dataclass
class HAPOConfig:
    mode: str = "min"  # history update: min (shortest correct length so far) | mean (running mean of correct lengths)
    shape: str = "cosine"  # length reward f (HAPO's type_lr): cosine | linear
    correct_floor: float = -0.7  # correct answers: max(f, floor)
    wrong_floor: float = -1.0  # linear: wrong answers' floor (cosine's f never falls below -1)
    tolerance: float = 0.1  # linear: correct answers within [h, (1 + tolerance) h) get 0, longer ones a penalty


def _validate(c: HAPOConfig) -> None:
    from laconic.registry import one_of

    one_of("reward.hapo.mode", c.mode, ("min", "mean"))
    one_of("reward.hapo.shape", c.shape, ("cosine", "linear"))


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

    def history(self) -> dict[str, float]:
        """uid -> h, every problem that has a history (a copy)."""
        return dict(self.h)

    def seed(self, history: dict[str, float]) -> None:
        """Set the history of the given problems (uid -> h > 0); in mean mode each counts as one correct answer."""
        for uid, h in history.items():
            if not (isinstance(h, (int, float)) and h > 0):
                raise ValueError(f"HAPO history of problem {uid!r} must be a length > 0, got {h!r}")
            self.h[str(uid)] = float(h)
            self.count[str(uid)] = max(self.count.get(str(uid), 0), 1)

    def state_dict(self) -> dict:
        return {"mode": self.mode, "h": dict(self.h), "count": dict(self.count)}

    def load_state_dict(self, state: dict) -> None:
        if state["mode"] != self.mode:
            raise ValueError(f"HAPO history was saved in mode {state['mode']!r}, config says {self.mode!r}")
        self.h, self.count = dict(state["h"]), {k: int(v) for k, v in state["count"].items()}


@register_term("hapo", state=HAPOHistory, config=HAPOConfig, validate=_validate)
def hapo(inp: RewardInput, cfg: RewardConfig, state: HAPOHistory) -> torch.Tensor:
    h = state.lookup([m["uid"] for m in inp.meta])
    n = inp.num_tokens.to(torch.float64)
    c = cfg.hapo
    if c.shape == "linear":
        over = -(n - (1 + c.tolerance) * h) / h
        long = n >= (1 + c.tolerance) * h
        right = torch.where(n < h, 1 - n / h, torch.where(long, over.clamp(min=c.correct_floor), torch.zeros_like(n)))
        r = torch.where(inp.correct, right, torch.where(long, over.clamp(min=c.wrong_floor), torch.zeros_like(n)))
    else:
        f = torch.cos(torch.clamp(math.pi / 2 * n / h, max=math.pi))
        r = torch.where(inp.correct, f.clamp(min=c.correct_floor), f.clamp(max=0.0))
    r = torch.where(torch.isnan(h), torch.zeros_like(r), r)
    return r.to(torch.float32)
