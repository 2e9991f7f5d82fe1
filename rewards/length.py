"""Stateless length terms, each the formula of its paper's released code. ``n`` is completion tokens (EOS
included when sampled; the cap when truncated), ``c`` the verifier's verdict, groups are rows of one prompt."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rewards.groups import group_index
from rewards.registry import register_term
from rewards.types import RewardInput

if TYPE_CHECKING:
    from rewards.config import RewardConfig


@dataclass
class LCPOExactConfig:
    alpha: float = 0.0003  # L1-Exact: r = c - alpha * |N - n| (Aggarwal & Welleck 2025)


@dataclass
class LCPOMaxConfig:
    alpha: float = 0.001  # L1-Max: r = c * clip(alpha * (N - n) + delta, 0, 1)
    delta: float = 0.5  # L1-Max offset (paper-era released code)
    combine: str = "multiply"  # multiply: c * clip(..) (paper) | add: c + clip(..) (L1's code, multiplier_reward=false)


@dataclass
class ShorterBetterConfig:
    alpha: float = 2.0  # weight of correctness: r = alpha * c - beta * |n - SOL| (Yi et al. 2025)
    beta: float = 0.001  # weight of the distance to the sample-optimal length


def _validate_max(c: LCPOMaxConfig) -> None:
    from laconic.registry import one_of

    one_of("reward.lcpo_max.combine", c.combine, ("multiply", "add"))


def _targets(inp: RewardInput) -> tuple[torch.Tensor, torch.Tensor]:
    """[B] float target N (0 where absent) and [B] bool has-target, from ``meta["target_tokens"]``."""
    t = [m.get("target_tokens") for m in inp.meta]
    has = torch.tensor([x is not None for x in t], dtype=torch.bool)
    return torch.tensor([float(x) if x is not None else 0.0 for x in t]), has


@register_term("lcpo_exact", config=LCPOExactConfig)
def lcpo_exact(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """L1-Exact (Aggarwal & Welleck 2025, eq. 1): ``r = c - alpha * |N - n|``, unclipped; rows without a target
    get plain ``c``. Example: alpha=3e-4, N=100: correct n=150 -> 1 - 0.015 = 0.985; wrong n=100 -> 0."""
    c = inp.correct.to(torch.float32)
    target, has = _targets(inp)
    pen = cfg.lcpo_exact.alpha * (target - inp.num_tokens.to(torch.float32)).abs()
    return torch.where(has, c - pen, c)


def _max_reward(c: torch.Tensor, target: torch.Tensor, n: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    m = cfg.lcpo_max
    delta = (m.alpha * (target - n) + m.delta).clamp(0.0, 1.0)
    return c * delta if m.combine == "multiply" else c + delta


@register_term("lcpo_max", config=LCPOMaxConfig, validate=_validate_max)
def lcpo_max(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """L1-Max: ``r = c * clip(alpha * (N - n) + delta, 0, 1)`` (``combine=add``: ``c + clip(...)``); rows without a
    target get ``c``. Example: alpha=1e-3, delta=.5, N=100: correct n=100 -> .5; n=0 -> .6; n=700 -> 0; wrong -> 0."""
    c = inp.correct.to(torch.float32)
    target, has = _targets(inp)
    return torch.where(has, _max_reward(c, target, inp.num_tokens.to(torch.float32), cfg), c)


@register_term("lcpo")
def lcpo(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """L1 with Exact and Max prompts in one run (cmu-l3/l1 @c3b546e6, ``math_reward.py`` ``math_reward_fn``): each
    row by its own instruction, ``meta["target_mode"]`` (or, for rows carrying L1's signed ``num_tokens`` as
    ``target_tokens``, the sign: N > 0 Exact, N < 0 Max with |N|): Exact rows ``c - alpha |N - n|``
    (``reward.lcpo_exact``), Max rows the L1-Max reward (``reward.lcpo_max``); rows without a target get ``c``.
    L1's Max delta ``(clip(a (|N| - n), -1, 1) + 1) / 2`` is ``lcpo_max`` with alpha = a / 2, delta = .5.

    Example (exact alpha 3e-4; max alpha 1e-3, delta .5, multiply), correct rows: Exact N=1000, n=1200 -> .94;
    Max N=1000, n=800 -> clip(.2 + .5) = .7; Max N=-1000 (signed), n=1500 -> clip(-.5 + .5) = 0."""
    c = inp.correct.to(torch.float32)
    n = inp.num_tokens.to(torch.float32)
    target, has = _targets(inp)
    modes = [m.get("target_mode") for m in inp.meta]
    is_max = torch.tensor([md == "max" if md else t < 0 for md, t in zip(modes, target.tolist())])
    target = target.abs()
    exact = c - cfg.lcpo_exact.alpha * (target - n).abs()
    r = torch.where(is_max, _max_reward(c, target, n, cfg), exact)
    return torch.where(has, r, c)


@register_term("shorterbetter", config=ShorterBetterConfig)
def shorterbetter(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """ShorterBetter (Yi et al. 2025; JingyangYi/ShorterBetter @b7564239, ``verl/verl/workers/reward_manager/naive.py``
    ``NaiveRewardManager.check_correctness_and_length`` and its reward): ``r = alpha * c - beta * |n - SOL|``, unclipped,
    SOL = the shortest correct length of the group, or the group's mean length when none is correct. Example (alpha=2, beta=1e-3): group n=[100, 300],
    c=[0, 1] -> SOL=300 -> r=[-0.2, 2.0]; all wrong n=[100, 300] -> SOL=200 -> r=[-0.1, -0.1]."""
    n = inp.num_tokens.to(torch.float32)
    c = inp.correct
    inv, g = group_index(inp.group_ids)
    big = torch.full((g,), float("inf"))
    shortest = big.scatter_reduce(0, inv, torch.where(c, n, torch.full_like(n, float("inf"))), "amin")
    mean = torch.zeros(g).index_add_(0, inv, n) / torch.zeros(g).index_add_(0, inv, torch.ones_like(n))
    sol = torch.where(torch.isfinite(shortest), shortest, mean)[inv]
    s = cfg.shorterbetter
    return s.alpha * c.to(torch.float32) - s.beta * (n - sol).abs()


@register_term("kimi")
def kimi(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """Kimi k1.5 length reward (Kimi Team 2025, §2.3.3; the paper only: MoonshotAI/Kimi-k1.5 releases no code):
    ``lambda = 0.5 - (n - n_min) / (n_max - n_min)`` per group (tokens; open-r1's ``len_reward`` counts characters);
    correct -> lambda, wrong -> min(0, lambda); all 0 when the group's lengths are equal.
    Example: n=[100, 200, 300], c=[1, 1, 0] -> lambda=[.5, 0, -.5] -> r=[.5, 0, -.5]."""
    n = inp.num_tokens.to(torch.float32)
    inv, g = group_index(inp.group_ids)
    lo = torch.full((g,), float("inf")).scatter_reduce(0, inv, n, "amin")[inv]
    hi = torch.full((g,), float("-inf")).scatter_reduce(0, inv, n, "amax")[inv]
    span = hi - lo
    lam = torch.where(span > 0, 0.5 - (n - lo) / span.clamp(min=1e-12), torch.zeros_like(n))
    return torch.where(inp.correct, lam, lam.clamp(max=0.0))
