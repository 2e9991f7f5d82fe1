"""Advantage estimators, one signature: ``fn(AdvantageInput, AlgoConfig) -> advantages [B,T]``.

All credit assignment ends here; the update step only sees the returned tensor.
"""
from __future__ import annotations

import torch

from laconic.registry import Registry
from trainers.algo.config import AlgoConfig
from trainers.algo.types import AdvantageInput

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


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, all_sum=None, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with mean and Bessel-corrected variance over the valid entries of every rank.
    x, mask: [B,T] -> [B,T] float64, 0 where mask is False. Example (one rank): x = [[1, 3], [5, pad]] -> mean 3,
    var (4 + 0 + 4) / 2 = 4 -> [[-1, 0], [1, 0]]."""
    total = all_sum if all_sum is not None else (lambda t: t)
    m = mask.to(torch.float64)
    x = x.to(torch.float64) * m
    n = total(m.sum().reshape(1))
    mu = total(x.sum().reshape(1)) / n.clamp(min=1)
    var = total((((x - mu) * m) ** 2).sum().reshape(1)) / (n - 1).clamp(min=1)
    return (x - mu) / torch.sqrt(var + eps) * m


@ADVANTAGE.register("dler_batch")
def dler_batch(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """DLER batch-wise normalisation (Liu et al. 2025): centre each reward on its group mean, then whiten over the
    whole batch (all ranks) instead of per group, so easy groups with tiny spread are not blown up.

    ``whiten="token"`` (released code): mean and Bessel-corrected variance over all valid response tokens,
    ``A = (a - mean) / sqrt(var + eps)``; ``whiten="sequence"`` (paper): the same over sequences.
    A group of one keeps its reward (baseline 0), as DLER's estimator does (NVlabs/DLER @498b8ed6,
    ``verl/trainer/ppo/core_algos.py`` ``compute_reinforce_plus_plus_baseline_outcome_advantage``, then
    ``masked_whiten`` over the batch's response tokens).
    Example (one rank, sequence form): groups [1, 0] and [1, 1] -> centred [.5, -.5, 0, 0], mean 0,
    var (.25+.25)/3 = 1/6 -> A = [1.2247, -1.2247, 0, 0].
    """
    mean, _, k = group_stats(inp.rewards, inp.group_ids)
    a = inp.rewards.to(torch.float64) - torch.where(k > 1, mean, torch.zeros_like(mean))  # [B]; a group of one: b = 0
    if cfg.whiten == "token":
        return masked_whiten(_broadcast(a, inp.mask), inp.mask, inp.all_sum, cfg.whiten_eps).to(torch.float32)
    seq = masked_whiten(a[:, None], torch.ones_like(a[:, None], dtype=torch.bool), inp.all_sum, cfg.whiten_eps)
    return _broadcast(seq[:, 0], inp.mask)


def boost_correct(adv: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, boost: float,
                  threshold: float) -> torch.Tensor:
    """DLER's correct-sample advantage boost (NVlabs/DLER @498b8ed6, ``verl/workers/actor/dp_actor.py``
    ``boost_high_score_advantages``, ``correct_sample_advantage_boost_value=0.1`` in ``dler.sh``): ``boost`` added
    to every token of a row whose score (before the length penalty) is at least ``threshold - 1e-5``, after the
    estimator and any whitening, so a correct completion keeps a positive push when its group or batch normalises
    it to about zero. ``adv`` [B,T], ``scores`` [B], ``mask`` [B,T] -> [B,T] (0 off the mask)."""
    high = (scores >= threshold - 1e-5).to(adv.dtype).unsqueeze(-1)
    return (adv + boost * high) * mask


def dense_rewards(inp: AdvantageInput) -> torch.Tensor:
    """[B,T] per-token rewards: ``token_rewards`` when a term produced them, else each sequence reward on its last
    valid token (the outcome reward of an episode that ends there)."""
    if inp.token_rewards is not None:
        r = torch.zeros(inp.mask.shape, dtype=torch.float64)
        w = min(r.shape[1], inp.token_rewards.shape[1])
        r[:, :w] = inp.token_rewards[:, :w].to(torch.float64)
        return r * inp.mask
    last = (inp.mask.sum(-1) - 1).clamp(min=0)
    r = torch.zeros(inp.mask.shape, dtype=torch.float64)
    r[torch.arange(len(last)), last] = inp.rewards.to(torch.float64)
    return r * inp.mask


@ADVANTAGE.register("gae")
def gae(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over completion tokens:

        delta_t = r_t + gamma * V_{t+1} - V_t   (V after the last token = 0),   A_t = delta_t + gamma * lam * A_{t+1}

    ``V_t`` = the critic's value of the state before token t; returns for the critic are ``A + V`` (unwhitened).
    Example: one row, r = [0, 1], V = [.5, .5], gamma = lam = 1 -> delta = [0, .5] -> A = [.5, .5].
    """
    if inp.values is None:
        raise ValueError("algo.advantage=gae needs critic values (AdvantageInput.values)")
    m = inp.mask.to(torch.float64)
    v = inp.values.to(torch.float64)[:, : m.shape[1]] * m
    r = dense_rewards(inp)
    adv = torch.zeros_like(v)
    nxt_v = torch.zeros(v.shape[0], dtype=torch.float64)
    nxt_a = torch.zeros(v.shape[0], dtype=torch.float64)
    for t in range(v.shape[1] - 1, -1, -1):
        delta = r[:, t] + cfg.gamma * nxt_v - v[:, t]
        nxt_a = (delta + cfg.gamma * cfg.lam * nxt_a) * m[:, t]
        nxt_v = v[:, t]
        adv[:, t] = nxt_a
    return adv.to(torch.float32)


@ADVANTAGE.register("token_group")
def token_group(inp: AdvantageInput, cfg: AlgoConfig) -> torch.Tensor:
    """DECS's ``grpo_proc_length`` estimator (pixas/DECS @0d12e536, ``src_valid/valid_ray_trainer.py``
    ``compute_grpo_proc_length_advantage_return``): per group g and position t, over ALL G rows of the group,

        mu_t = mean_i R[i, t],  sigma_t = sample std_i R[i, t] (n - 1),  A[i, t] = (R[i, t] - mu_t) / (sigma_t + eps)

    where a row's positions past its end hold its fill value: the reward of its first token, which DECS's reward
    gives every non-redundant token, s (1 + beta): 1.1 for a correct rollout, 0 for a wrong one. So the longest
    rollout's tail past its siblings' ends is compared with their fill (the redundancy DECS penalises), not only
    with the rollouts still running. eps = ``cfg.std_eps`` (1e-6 in DECS); a group of one gets mu = 0, sigma = 1.

    Example (DECS's beta = .1, L_max = 5): rows correct n=2, wrong n=3, correct n=4 whose tokens 2-3 are redundant
    (1 + .1 (1 - 4/5) = 1.02): position 0: R = (1.1, 0, 1.1), mu = .7333, sigma = .6351 -> A = (.577, -1.155, .577);
    position 2: R = (1.1 fill, 0, 1.02), mu = .7067, sigma = .6133 -> A = (masked, -1.152, .511).
    """
    if inp.token_rewards is None:
        raise ValueError("algo.advantage=token_group needs a token-level reward term (e.g. reward.terms with decs)")
    m = inp.mask.to(torch.float64)
    r = torch.zeros(m.shape, dtype=torch.float64)
    w = min(r.shape[1], inp.token_rewards.shape[1])
    r[:, :w] = inp.token_rewards[:, :w].to(torch.float64)
    r = torch.where(m > 0, r, r[:, :1])  # past a row's end: its fill value
    _, inv, counts = torch.unique(inp.group_ids, return_inverse=True, return_counts=True)
    k = counts.to(torch.float64)[:, None]
    s1 = torch.zeros(len(counts), r.shape[1], dtype=torch.float64).index_add_(0, inv, r)
    mu = s1 / k
    sq = torch.zeros_like(s1).index_add_(0, inv, (r - mu[inv]) ** 2)
    sigma = torch.sqrt(sq / (k - 1).clamp(min=1))
    single = (counts == 1)[:, None]
    mu = torch.where(single, torch.zeros_like(mu), mu)
    sigma = torch.where(single, torch.ones_like(sigma), sigma)
    return ((r - mu[inv]) / (sigma[inv] + cfg.std_eps) * m).to(torch.float32)
