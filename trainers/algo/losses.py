"""Per-token policy losses, one signature: ``fn(LossInput, AlgoConfig) -> LossOutput``.

Losses return per-token values; how they are averaged is :mod:`trainers.algo.aggregation`'s explicit choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from laconic.registry import Registry
from trainers.algo.config import AlgoConfig
from trainers.algo.types import LossInput, LossOutput

LOSS = Registry("policy loss")


@LOSS.register("ppo_clip")
def ppo_clip(inp: LossInput, cfg: AlgoConfig) -> LossOutput:
    """PPO clipped surrogate (Schulman et al. 2017) with decoupled bounds (clip-higher, DAPO, Yu et al. 2025):

        rho = exp(logp - logp_old)
        loss = -min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)

    Example: rho = 1.5, A = +1, bounds 0.2 / 0.28 -> -min(1.5, 1.28) = -1.28 (clipped);
             rho = 0.5, A = +1 -> -min(0.5, 0.8) = -0.5 (not clipped: pessimistic side).
    """
    m = inp.mask.to(torch.float32)
    ratio = torch.exp(inp.logprobs - inp.old_logprobs)
    unclipped = ratio * inp.advantages
    clipped = ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high) * inp.advantages
    per_token = -torch.minimum(unclipped, clipped) * m
    clip_frac = (clipped < unclipped).to(torch.float32) * m
    approx_kl = 0.5 * (inp.logprobs - inp.old_logprobs).detach() ** 2 * m
    return LossOutput(per_token=per_token, metrics={"clip_frac": clip_frac.detach(), "approx_kl": approx_kl})


# ------------------------------------------------------------------------------------------------ KL to reference
KL = Registry("KL estimator")


@KL.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``k1 = log pi - log pi_ref`` (unbiased for KL(pi || pi_ref) under pi, high variance, can be negative).
    Example: logp = log .5, ref = log .25 -> log 2 = .6931."""
    return logp - ref_logp


@KL.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """``k2 = (log pi - log pi_ref)^2 / 2`` (biased, low variance, >= 0). Example: log-ratio log 2 -> .2402."""
    return 0.5 * (logp - ref_logp) ** 2


@KL.register("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's low-variance unbiased estimator ``k3 = r - 1 - log r`` with ``r = pi_ref / pi`` (>= 0).
    The log-ratio is clamped to [-20, 20] so one extreme token cannot overflow exp.
    Example: logp = log .5, ref = log .25 -> r = .5 -> .5 - 1 + .6931 = .1931."""
    log_r = (ref_logp - logp).clamp(-20.0, 20.0)
    return torch.exp(log_r) - 1.0 - log_r


# ------------------------------------------------------------------------------------ sampler mismatch correction
SAMPLER_CORRECTION = Registry("sampler correction")


@dataclass(frozen=True)
class ISWeights:
    weights: torch.Tensor  # [B,T] float: importance weight multiplying each token's policy loss (no grad)
    keep: torch.Tensor  # [B,T] bool: tokens that stay in the loss (masked-IS rejects the rest, numerator and denominator)


def _log_ratio(old: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B,T] ``log pi_trainer - log pi_sampler`` of the sampled tokens, 0 on padding."""
    return ((old - sampler) * mask).detach()


@SAMPLER_CORRECTION.register("none")
def no_correction(old, sampler, mask, cap: float) -> ISWeights:
    return ISWeights(torch.ones_like(old), mask.clone())


@SAMPLER_CORRECTION.register("token_tis")
def token_tis(old, sampler, mask, cap: float) -> ISWeights:
    """Truncated importance sampling per token (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training"): ``w_t = min(pi_trainer / pi_sampler, cap)``. Example: cap 2, log-ratios [.1, 1.0]
    -> w = [1.1052, 2.0]."""
    return ISWeights(torch.exp(_log_ratio(old, sampler, mask)).clamp(max=cap) * mask, mask.clone())


@SAMPLER_CORRECTION.register("token_mis")
def token_mis(old, sampler, mask, cap: float) -> ISWeights:
    """Masked importance sampling per token: weight ``pi_trainer / pi_sampler``, and tokens whose ratio lies outside
    ``[1/cap, cap]`` leave the loss entirely (its denominator too). Example: cap 2, log-ratios [.1, 1.0, -1.0] ->
    w = [1.1052, 0, 0], keep = [1, 0, 0]."""
    ratio = torch.exp(_log_ratio(old, sampler, mask))
    keep = mask & (ratio <= cap) & (ratio >= 1.0 / cap)
    return ISWeights(ratio * keep, keep)


def _seq_ratio(old, sampler, mask) -> torch.Tensor:
    """[B,1] sequence ratio ``prod_t pi_trainer / pi_sampler`` (log-sum clamped to [-20, 20])."""
    return torch.exp(_log_ratio(old, sampler, mask).sum(-1, keepdim=True).clamp(-20.0, 20.0))


@SAMPLER_CORRECTION.register("seq_tis")
def seq_tis(old, sampler, mask, cap: float) -> ISWeights:
    """Sequence-level truncated IS: every token of row i gets ``min(prod_t ratio_t, cap)``.
    Example: cap 2, row log-ratios [.3, .5] -> exp(.8) = 2.2255 -> w = 2 on both tokens."""
    return ISWeights(_seq_ratio(old, sampler, mask).clamp(max=cap) * mask, mask.clone())


@SAMPLER_CORRECTION.register("seq_mis")
def seq_mis(old, sampler, mask, cap: float) -> ISWeights:
    """Sequence-level masked IS: rows whose sequence ratio lies outside ``[1/cap, cap]`` are rejected whole."""
    ratio = _seq_ratio(old, sampler, mask)
    keep = mask & (ratio <= cap) & (ratio >= 1.0 / cap)
    return ISWeights(ratio * keep, keep)


# ------------------------------------------------------------------------------------------------ value loss
def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float) -> LossOutput:
    """PPO's clipped value loss (Schulman et al. 2017; as in OpenAI baselines / verl), per token:

        V_clip = old + clip(V - old, -c, c);   loss = 0.5 * max((V - R)^2, (V_clip - R)^2)

    Example: old 0, V 1, R 2, c .2 -> unclipped (1-2)^2 = 1, clipped (.2-2)^2 = 3.24 -> 1.62 (clipped side wins).
    values / old_values / returns / mask: [B,T]."""
    m = mask.to(values.dtype)
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    unclipped, clipped = (values - returns) ** 2, (v_clip - returns) ** 2
    per_token = 0.5 * torch.maximum(unclipped, clipped) * m
    frac = (clipped > unclipped).to(torch.float32) * m
    return LossOutput(per_token=per_token, metrics={"vf_clip_frac": frac.detach()})
