"""Advantage estimators, one signature: ``fn(AdvantageInput, AlgoConfig) -> advantages [B,T]``.

All credit assignment ends here; the update step only sees the returned tensor.
"""
from __future__ import annotations

import torch

from trainers.config import AlgoConfig
from trainers.registry import Registry
from trainers.types import AdvantageInput

ADVANTAGE = Registry("advantage estimator")


def group_stats(x: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row group mean, unbiased group std (0 for groups of one) and group size, each [B]."""
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    x = x.to(torch.float64)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inv, x)
    mean = sums / counts
    sq = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inv, (x - mean[inv]) ** 2)
    var = torch.where(counts > 1, sq / (counts - 1).clamp(min=1), torch.zeros_like(sq))
    return mean[inv], var.sqrt()[inv], counts[inv]


def _broadcast(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return adv.to(torch.float32)[:, None] * mask.to(torch.float32)


@ADVANTAGE.register("grpo")
def grpo(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """GRPO (Shao et al. 2024, eq. 3): ``A_i = (r_i - mean_g) / (std_g + eps)``; without std when
    ``cfg.scale_std`` is False (Dr.GRPO, Liu et al. 2025). Groups of one get A = 0.

    Example: one group r = [1, 0, 0, 1] -> mean 0.5, std 0.5774 -> A = [0.866, -0.866, -0.866, 0.866].
    """
    mean, std, _ = group_stats(inp.rewards, inp.group_ids)
    centred = inp.rewards.to(torch.float64) - mean
    if cfg.scale_std:  # a zero-spread group has centred == 0: give it 0, never 0/0
        adv = torch.where(std > 0, centred / (std + cfg.std_eps), torch.zeros_like(centred))
    else:
        adv = centred
    return _broadcast(adv, inp.mask)


@ADVANTAGE.register("dr_grpo")
def dr_grpo(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): ``A_i = r_i - mean_g``, no std."""
    mean, _, _ = group_stats(inp.rewards, inp.group_ids)
    return _broadcast(inp.rewards.to(torch.float64) - mean, inp.mask)


@ADVANTAGE.register("rloo")
def rloo(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024): ``A_i = r_i - mean_{j != i} r_j = k/(k-1) (r_i - mean_g)``; 0 for groups of one."""
    mean, _, k = group_stats(inp.rewards, inp.group_ids)
    k = k.to(torch.float64)
    adv = torch.where(k > 1, (inp.rewards.to(torch.float64) - mean) * k / (k - 1).clamp(min=1), torch.zeros_like(k))
    return _broadcast(adv, inp.mask)


def _sum(inp: AdvantageInput, t: torch.Tensor) -> torch.Tensor:
    return inp.all_sum(t) if inp.all_sum is not None else t


@ADVANTAGE.register("dler_batch")
def dler_batch(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """DLER batch-wise normalisation (Liu et al. 2025): centre each reward on its group mean, then whiten over the
    whole batch (all ranks) instead of per group, so easy groups with tiny spread are not blown up.

    ``whiten="token"`` (released code): mean and Bessel-corrected variance over all valid response tokens,
    ``A = (a - mean) / sqrt(var + eps)``; ``whiten="sequence"`` (paper): the same over sequences.
    Example (one rank, sequence form): groups [1, 0] and [1, 1] -> centred [.5, -.5, 0, 0], mean 0,
    var (.25+.25)/3 = 1/6 -> A = [1.2247, -1.2247, 0, 0].
    """
    mean, _, _ = group_stats(inp.rewards, inp.group_ids)
    a = inp.rewards.to(torch.float64) - mean  # [B]
    m = inp.mask.to(torch.float64)
    w = m.sum(-1) if cfg.whiten == "token" else torch.ones_like(a)  # weight of each sequence in the statistics
    n, s1 = _sum(inp, w.sum().reshape(1)), _sum(inp, (w * a).sum().reshape(1))
    mu = s1 / n
    var = _sum(inp, (w * (a - mu) ** 2).sum().reshape(1)) / (n - 1).clamp(min=1)
    return _broadcast((a - mu) / torch.sqrt(var + cfg.whiten_eps), inp.mask)


@ADVANTAGE.register("token_group")
def token_group(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """Per-position group normalisation of token rewards (DECS released code): for group g and position t,
    over the group's rows that have a token at t,

        mu_t = mean R[:, t],  sigma_t = sqrt(mean R[:, t]^2 - mu_t^2 + eps),  A[i, t] = (R[i, t] - mu_t) / (sigma_t + eps)

    with eps = ``cfg.std_eps``; a group of one gets mu = 0, sigma = 1.
    Example: two rows, R = [[1.1, 1.1], [1.1, 1.05]] -> position 0: A = 0, 0; position 1: mu = 1.075,
    sigma = .025 -> A = [+1, -1] (up to eps).
    """
    if inp.token_rewards is None:
        raise ValueError("algo.advantage=token_group needs a token-level reward term (e.g. reward.terms with decs)")
    r = inp.token_rewards.to(torch.float64)
    m = inp.mask.to(torch.float64)[:, : r.shape[1]]
    r = r[:, : m.shape[1]] * m
    _, inv, counts = torch.unique(inp.group_ids, return_inverse=True, return_counts=True)
    g = len(counts)
    cnt = torch.zeros(g, r.shape[1], dtype=torch.float64).index_add_(0, inv, m)
    s1 = torch.zeros_like(cnt).index_add_(0, inv, r)
    s2 = torch.zeros_like(cnt).index_add_(0, inv, r * r)
    mu = s1 / cnt.clamp(min=1)
    sigma = torch.sqrt((s2 / cnt.clamp(min=1) - mu * mu).clamp(min=0) + cfg.std_eps)
    single = (counts == 1)[:, None]
    mu = torch.where(single, torch.zeros_like(mu), mu)
    sigma = torch.where(single, torch.ones_like(sigma), sigma)
    adv = (r - mu[inv]) / (sigma[inv] + cfg.std_eps) * m
    out = torch.zeros(inp.mask.shape, dtype=torch.float32)
    out[:, : adv.shape[1]] = adv.to(torch.float32)
    return out
