"""``algo.*``: the algorithms' slice of the config, and the rules that involve only it."""
from __future__ import annotations

from dataclasses import dataclass

from laconic.registry import one_of


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # advantage estimator in trainers.algo.advantages.ADVANTAGE
    scale_std: bool = True  # GRPO: divide the group-centred reward by the group std (False = Dr.GRPO)
    std_eps: float = 1e-6  # added to the group std
    whiten: str = "token"  # dler_batch: whiten over all valid tokens (released code) | "sequence" (paper)
    whiten_eps: float = 1e-8  # dler_batch: (A - mean) / sqrt(var + eps)
    loss: str = "ppo_clip"  # per-token policy loss in trainers.algo.losses.LOSS
    clip_low: float = 0.2  # PPO ratio clip below: 1 - clip_low
    clip_high: float = 0.2  # PPO ratio clip above: 1 + clip_high (clip-higher: e.g. 0.28)
    aggregation: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    norm_length: int = 0  # seq-mean-token-sum-norm's constant divisor; 0 = rollout.max_tokens (Dr.GRPO)
    correct_boost: float = 0.0  # added to the advantage of every row whose score reached correct_boost_threshold (DLER: 0.1)
    correct_boost_threshold: float = 1.0  # on RewardOutput.score (before truncation / length rules), within 1e-5
    whiten_advantages: bool = False  # whiten advantages over the whole batch (all ranks) after the estimator (PPO)
    gamma: float = 1.0  # gae: discount
    lam: float = 1.0  # gae: lambda of generalised advantage estimation
    kl_coef: float = 0.0  # weight beta of KL(policy || reference); 0 = no reference model is loaded at all
    kl_estimator: str = "k3"  # k1 (log-ratio) | k2 (squared log-ratio / 2) | k3 (low-variance, Schulman)
    kl_in_reward: bool = False  # subtract beta * KL per token from the reward (PPO style) instead of adding it to the loss
    sampler_correction: str = "none"  # vLLM-vs-trainer mismatch: none | token_tis | token_mis | seq_tis | seq_mis
    sampler_is_cap: float = 2.0  # truncation (tis) or rejection (mis) threshold of the sampler importance ratio


def validate(a: AlgoConfig) -> None:
    """Rules of ``algo.*`` alone (cross-room rules live in :func:`trainers.config.validate`). Raises ValueError."""
    from trainers.algo.advantages import ADVANTAGE
    from trainers.algo.aggregation import AGGREGATIONS
    from trainers.algo.losses import KL, LOSS, SAMPLER_CORRECTION

    one_of("algo.advantage", a.advantage, ADVANTAGE)
    one_of("algo.loss", a.loss, LOSS)
    one_of("algo.aggregation", a.aggregation, AGGREGATIONS)
    one_of("algo.whiten", a.whiten, ("token", "sequence"))
    one_of("algo.kl_estimator", a.kl_estimator, KL)
    one_of("algo.sampler_correction", a.sampler_correction, SAMPLER_CORRECTION)
    if not (0 <= a.clip_low < 1 and a.clip_high >= 0):
        raise ValueError(f"algo.clip_low={a.clip_low} must be in [0,1) and algo.clip_high={a.clip_high} >= 0")
    if a.kl_coef < 0:
        raise ValueError(f"algo.kl_coef={a.kl_coef} must be >= 0")
    if a.kl_in_reward and a.kl_coef == 0:
        raise ValueError("algo.kl_in_reward=true needs algo.kl_coef > 0 (there is no KL penalty to put in the reward)")
    if a.sampler_is_cap <= 1:
        raise ValueError(f"algo.sampler_is_cap={a.sampler_is_cap} must be > 1")
    if a.correct_boost < 0:
        raise ValueError(f"algo.correct_boost={a.correct_boost} must be >= 0 (0 = off)")
    if not (0 <= a.gamma <= 1 and 0 <= a.lam <= 1):
        raise ValueError(f"algo.gamma={a.gamma} and algo.lam={a.lam} must lie in [0, 1]")
