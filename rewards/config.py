"""Rewards slice of the config: which terms make up the reward and their parameters.

Each paper's term has its own section with the authors' defaults; ``terms`` picks terms and weights, ``transforms``
picks rollout transforms (DOT) that rewrite completions before any term reads them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CorrectnessConfig:
    verifier: str = "exact_integer"  # name in rewards.verifiers.VERIFIERS, or a user one: "module:function" / "file.py:function"
    correct: float = 1.0  # reward of a verified-correct completion
    incorrect: float = 0.0  # reward of a wrong or unparseable completion


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


@dataclass
class HAPOConfig:
    weight: float = 1.0  # w: the term is w * f(n / h) on top of a separate correctness term (Huang et al. 2025)
    mode: str = "min"  # history update: min (shortest correct length so far) | mean (running mean of correct lengths)
    shape: str = "cosine"  # length reward f (HAPO's type_lr): cosine | linear
    correct_floor: float = -0.7  # correct answers: max(f, floor)
    wrong_floor: float = -1.0  # linear: wrong answers' floor (cosine's f never falls below -1)
    tolerance: float = 0.1  # linear: correct answers within [h, (1 + tolerance) h) get 0, longer ones a penalty


@dataclass
class KimiConfig:
    weight: float = 1.0  # Kimi k1.5 group length penalty weight


@dataclass
class DECSConfig:
    beta: float = 0.1  # token reward 1 + beta on necessary tokens, 1 + beta * (1 - n / max_len) on redundant ones
    max_len: int = 0  # L_max of the redundant-token reward; 0 = the rollout's completion cap (filled by the trainer)
    detector: str = "answer_value"  # first-answer-chunk detector: rewards.decs.DETECTORS name or "module:function"
    weight: float = 1.0  # weight of the token-level term


@dataclass
class DOTConfig:
    alpha: float = 3.0  # alpha in the cut T = floor(mean + alpha * std) of a group's lengths (Wu et al. 2026)
    min_tokens: int = 32  # m: a completion is cut only when n - T >= m tokens
    success_threshold: float = 1.0  # groups whose verified accuracy is >= this are eligible (1.0 = all correct)


@dataclass
class CEEHConfig:
    scale: float = 0.1  # s in max(floor, s * (L* - n) / L*) for correct completions (Luo et al. 2026, train.sh)
    floor: float = -0.9  # lower clip of the length term, so a correct answer never scores below a wrong one
    rate_fast: float = 0.2  # EMA rate when accuracy rises / the batch's shortest correct length falls below L*
    rate_slow: float = 0.05  # EMA rate otherwise


@dataclass
class DECSCurriculumConfig:
    enabled: bool = False  # the trainer adds back a share kappa of all-correct groups after dynamic sampling
    lr: float = 0.2  # beta in kappa <- clip(kappa + beta * (R_m - R_{m-1}), 0, share of all-correct prompts)
    kappa_init: float = 0.0  # kappa_0: no all-correct prompt is added back at first (released code)
    r_init: float = 0.5  # R_0: the relative position the first step's R_1 is compared with (released code)


@dataclass
class RewardConfig:
    terms: dict[str, float] = field(default_factory=lambda: {"correctness": 1.0})  # term name (or user "module:function") -> weight
    timeout_s: float = 30.0  # per call of a verifier / user term: past it (or on an exception) the completion scores 0
    transforms: list[str] = field(default_factory=list)  # rollout transforms (rewards.TRANSFORMS) run before the terms
    truncation: str = "none"  # completions cut at the cap: none | zero (DLER paper) | scale (DLER code: x truncation_scale)
    truncation_scale: float = 0.1  # factor of a truncated completion's reward when truncation=scale
    # JSON file seeding the stateful terms' per-problem history: {"hapo": {uid: h}, "ceeh": {uid: {"acc": a,
    # "opt_len": L}}} (the layout of a run's reward_history.json); "" = every problem starts without history
    history_file: str = ""
    difficulty_cap_threshold: float = 0.0  # DA-DLER: groups with accuracy >= this get the tight cap; 0 = off (paper .5)
    difficulty_cap_factor: float = 0.5  # DA-DLER: the tight cap is factor x RewardInput.max_tokens (paper 2000 of 4000)
    correctness: CorrectnessConfig = field(default_factory=CorrectnessConfig)  # correctness term
    lcpo_exact: LCPOExactConfig = field(default_factory=LCPOExactConfig)  # L1-Exact term
    lcpo_max: LCPOMaxConfig = field(default_factory=LCPOMaxConfig)  # L1-Max term
    shorterbetter: ShorterBetterConfig = field(default_factory=ShorterBetterConfig)  # ShorterBetter term
    hapo: HAPOConfig = field(default_factory=HAPOConfig)  # HAPO history term
    kimi: KimiConfig = field(default_factory=KimiConfig)  # Kimi k1.5 length term
    decs: DECSConfig = field(default_factory=DECSConfig)  # DECS token-level term
    decs_curriculum: DECSCurriculumConfig = field(default_factory=DECSCurriculumConfig)  # DECS curriculum schedule
    dot: DOTConfig = field(default_factory=DOTConfig)  # DOT rollout transform
    ceeh: CEEHConfig = field(default_factory=CEEHConfig)  # CEEH length term


def validate(cfg: RewardConfig) -> None:
    """Rules of ``reward.*`` alone: every name registered (or an importable user function), every parameter in
    range. Raises ValueError / KeyError naming the field."""
    from laconic.registry import one_of
    from rewards.registry import check_names, read_history_file, resolve_verifier

    check_names(cfg)  # unknown terms / transforms / truncation rule, user terms ("module:function") importable
    resolve_verifier(cfg.correctness.verifier)
    if cfg.timeout_s < 0:
        raise ValueError(f"reward.timeout_s={cfg.timeout_s} must be >= 0 (0 = no per-call timeout)")
    one_of("reward.hapo.mode", cfg.hapo.mode, ("min", "mean"))
    one_of("reward.hapo.shape", cfg.hapo.shape, ("cosine", "linear"))
    one_of("reward.lcpo_max.combine", cfg.lcpo_max.combine, ("multiply", "add"))
    for name, hist in read_history_file(cfg).items():  # the file parses and every entry is valid, before any model
        from rewards.registry import STATE_TYPES

        STATE_TYPES[name](cfg).seed(hist)
