"""Rewards slice of the config: which terms make up the reward, and every term's parameters.

``terms`` picks terms and their weights (a term's only weight), ``transforms`` picks rollout transforms (DOT) that
rewrite completions before any term reads them. Each term or transform file declares its own section
(``register_term(name, config=..., validate=...)``, :mod:`rewards.registry`); ``RewardConfig`` is built here from
the fields below plus every declared section, after every module of the rewards room is imported, so adding a term
is one file (and its test).
"""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DECSCurriculumConfig:
    enabled: bool = False  # the trainer adds back a share kappa of all-correct groups after dynamic sampling
    lr: float = 0.2  # beta in kappa <- clip(kappa + beta * (R_m - R_{m-1}), 0, share of all-correct prompts)
    kappa_init: float = 0.0  # kappa_0: no all-correct prompt is added back at first (released code)
    r_init: float = 0.5  # R_0: the relative position the first step's R_1 is compared with (released code)


@dataclass
class _Shared:
    """The fields of ``RewardConfig`` that belong to no single term."""

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
    decs_curriculum: DECSCurriculumConfig = field(default_factory=DECSCurriculumConfig)  # DECS curriculum schedule


def _build():
    """``RewardConfig``: the shared fields, then one section per declared term / transform config (in declaration
    order). Every module of this room is imported first, so every term file has declared its section."""
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if mod.name != "config":
            importlib.import_module(f"rewards.{mod.name}")
    from rewards.registry import SECTIONS

    sections = [(name, cls, field(default_factory=cls)) for name, cls in SECTIONS.items()]
    cls = dataclasses.make_dataclass("RewardConfig", sections, bases=(_Shared,))
    cls.__module__ = __name__
    cls.__doc__ = "The rewards slice: shared fields and every term's section (module docstring)."
    globals().update({c.__name__: c for c in SECTIONS.values()})  # rewards.config.HAPOConfig etc.
    return cls


RewardConfig = _build()


def validate(cfg: RewardConfig) -> None:
    """Rules of ``reward.*`` alone: every name registered (or an importable user function), every section by its
    term's own validation, the history file. Raises ValueError / KeyError naming the field."""
    from rewards.registry import STATE_TYPES, VALIDATORS, check_names, read_history_file, resolve_verifier

    check_names(cfg)  # unknown terms / transforms / truncation rule, user terms ("module:function") importable
    resolve_verifier(cfg.correctness.verifier)
    if cfg.timeout_s < 0:
        raise ValueError(f"reward.timeout_s={cfg.timeout_s} must be >= 0 (0 = no per-call timeout)")
    for section, check in VALIDATORS.items():
        check(getattr(cfg, section))
    for name, hist in read_history_file(cfg).items():  # the file parses and every entry is valid, before any model
        STATE_TYPES[name](cfg).seed(hist)
