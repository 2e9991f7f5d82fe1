"""Per-token policy losses, one signature: ``fn(LossInput, AlgoConfig) -> LossOutput``.

Losses return per-token values; how they are averaged is :mod:`trainers.aggregation`'s explicit choice.
"""
from __future__ import annotations

import torch

from trainers.config import AlgoConfig
from trainers.registry import Registry
from trainers.types import LossInput, LossOutput

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
