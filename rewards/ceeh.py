"""CEEH length term (Luo et al. 2026, "Compress the Easy, Explore the Hard", arXiv 2602.22642, §3.3-3.4, eq. 13-16;
released code QinwenLuo/CEEH @c3266288 ``trainer/edlao_trainer.py`` ``EDLAORayPPOTrainer.compute_length_reward``,
defaults from ``train.sh``).

Per problem (``meta["uid"]``) the state keeps a historical accuracy ``Acc_h`` and an optimal length ``L*``, both
asymmetric EMAs. For a completion of ``n`` tokens in a group whose accuracy in this batch is ``acc``:

    correct, acc >= Acc_h, L* known:  r = max(floor, s * (L* - n) / L*)      s = 0.1, floor = -0.9
    otherwise (wrong, gate closed, no L* yet):  r = 0

The term sits on top of a separate correctness term (total = c + r), so the floor keeps a correct answer above a
wrong one. All rewards of a batch read the state from before the batch; afterwards, per problem,

    Acc_h <- (1 - eta) Acc_h + eta * acc      eta = .2 if acc > Acc_h else .05     (eq. 15-16; first visit: acc)
    L*    <- (1 - eta) L* + eta * n_min       eta = .2 if n_min < L* else .05      (n_min: shortest correct length;
                                                                                    first correct visit: n_min)

Example (s .1, L* 100, Acc_h .5): in a group with acc .75, correct n = 50 -> .05; n = 100 -> 0; n = 300 -> -.2;
n = 2000 -> max(-.9, -1.9) = -.9; a wrong answer -> 0. The same completions in a group with acc .25 (< Acc_h) -> 0.
Then (batch n_min 50) L* <- .8 * 100 + .2 * 50 = 90 and Acc_h <- .8 * .5 + .2 * .75 = .55.

Where the paper and code differ we follow: the gate is ``acc >= Acc_h`` as in the code (the paper writes ``>``,
which would never compress a problem solved every time); ``L*`` is the code's EMA of each batch's shortest correct
length (the paper says "historically shortest"); a problem whose ``Acc_h`` is exactly 0 is updated by the EMA (the
code resets any ``Acc_h <= 0`` to the new accuracy). The difficulty-aware entropy regularisation of §3.2 acts on
the loss, not the reward; :meth:`CEEHState.hard` gives its eq. 10 set for the trainer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rewards.groups import group_mean
from rewards.registry import register_term
from rewards.types import RewardInput

if TYPE_CHECKING:
    from rewards.config import RewardConfig

@dataclass
class CEEHConfig:
    scale: float = 0.1  # s in max(floor, s * (L* - n) / L*) for correct completions (Luo et al. 2026, train.sh)
    floor: float = -0.9  # lower clip of the length term, so a correct answer never scores below a wrong one
    rate_fast: float = 0.2  # EMA rate when accuracy rises / the batch's shortest correct length falls below L*
    rate_slow: float = 0.05  # EMA rate otherwise


Update = dict[str, tuple[int, int, float]]  # uid -> (correct completions, completions, shortest correct length)


def ema(old: float | None, new: float, fast: float, slow: float, fast_when_up: bool) -> float:
    """Asymmetric EMA: rate ``fast`` when ``new`` moves the way ``fast_when_up`` names, else ``slow``; ``old=None``
    (first visit) -> ``new``. Example: ema(.5, .75, .2, .05, True) = .55; ema(100, 50, .2, .05, False) = 90."""
    if old is None:
        return new
    rate = fast if (new > old if fast_when_up else new < old) else slow
    return (1 - rate) * old + rate * new


class CEEHState:
    def __init__(self, cfg: RewardConfig) -> None:
        self.fast, self.slow = cfg.ceeh.rate_fast, cfg.ceeh.rate_slow
        self.acc: dict[str, float] = {}  # uid -> Acc_h, historical accuracy
        self.opt_len: dict[str, float] = {}  # uid -> L*, optimal (EMA of shortest correct) length

    def lookup(self, uids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B] Acc_h, [B] L*) float64, NaN where the problem has none yet."""
        acc = torch.tensor([self.acc.get(u, math.nan) for u in uids], dtype=torch.float64)
        return acc, torch.tensor([self.opt_len.get(u, math.nan) for u in uids], dtype=torch.float64)

    def hard(self, uids: list[str]) -> torch.Tensor:
        """[B] bool, eq. 10: ``Acc_h(x)`` below the mean ``Acc_h`` of every problem seen (False when unseen)."""
        if not self.acc:
            return torch.zeros(len(uids), dtype=torch.bool)
        mean = sum(self.acc.values()) / len(self.acc)
        return torch.tensor([u in self.acc and self.acc[u] < mean for u in uids], dtype=torch.bool)

    def observe(self, inp: RewardInput) -> Update:
        out: Update = {}
        for m, n, ok in zip(inp.meta, inp.num_tokens.tolist(), inp.correct.tolist()):
            c, k, lo = out.get(m["uid"], (0, 0, math.inf))
            out[m["uid"]] = (c + int(ok), k + 1, min(lo, float(n)) if ok else lo)
        return out

    def apply(self, updates: list[Update]) -> None:
        merged: Update = {}
        for upd in updates:
            for uid, (c, k, lo) in upd.items():
                c0, k0, lo0 = merged.get(uid, (0, 0, math.inf))
                merged[uid] = (c0 + c, k0 + k, min(lo0, lo))
        for uid, (c, k, lo) in merged.items():
            self.acc[uid] = ema(self.acc.get(uid), c / k, self.fast, self.slow, fast_when_up=True)
            if c:
                self.opt_len[uid] = ema(self.opt_len.get(uid), lo, self.fast, self.slow, fast_when_up=False)

    def history(self) -> dict[str, dict[str, float]]:
        """uid -> {"acc": Acc_h, "opt_len": L*} (``opt_len`` only once the problem was solved), a copy."""
        return {u: {"acc": a} | ({"opt_len": self.opt_len[u]} if u in self.opt_len else {}) for u, a in self.acc.items()}

    def seed(self, history: dict[str, dict[str, float]]) -> None:
        """Set ``Acc_h`` (in [0, 1]) and optionally ``L*`` (> 0) of the given problems."""
        for uid, h in history.items():
            acc, opt = h.get("acc"), h.get("opt_len")
            if not (isinstance(acc, (int, float)) and 0 <= acc <= 1) or (opt is not None and not opt > 0):
                raise ValueError(f"CEEH history of problem {uid!r} must be {{'acc': [0, 1], 'opt_len': > 0}}, got {h!r}")
            self.acc[str(uid)] = float(acc)
            if opt is not None:
                self.opt_len[str(uid)] = float(opt)

    def state_dict(self) -> dict:
        return {"acc": dict(self.acc), "opt_len": dict(self.opt_len)}

    def load_state_dict(self, state: dict) -> None:
        self.acc = {k: float(v) for k, v in state["acc"].items()}
        self.opt_len = {k: float(v) for k, v in state["opt_len"].items()}


@register_term("ceeh", state=CEEHState, config=CEEHConfig)
def ceeh(inp: RewardInput, cfg: RewardConfig, state: CEEHState) -> torch.Tensor:
    c = cfg.ceeh
    acc_h, opt = state.lookup([m["uid"] for m in inp.meta])
    acc_now = group_mean(inp.correct, inp.group_ids)
    gate = torch.isnan(acc_h) | (acc_now >= acc_h)  # a first visit has no history to fall below (code: Acc_h = -1)
    r = (c.scale * (opt - inp.num_tokens.to(torch.float64)) / opt).clamp(min=c.floor)
    on = inp.correct & gate & ~torch.isnan(opt)
    return torch.where(on, r, torch.zeros_like(r)).to(torch.float32)
