"""Reward terms registered by name. A term is ``fn(RewardInput, RewardConfig) -> Tensor[B]``.

The verifier runs once, before any term, and its verdicts travel in ``RewardInput.correct``: the format gate
and answer check stay in one place and every term (correctness or length shaping) reads the same verdict.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from rewards.config import RewardConfig
from rewards.types import RewardInput, RewardOutput
from rewards.verifiers import VERIFIERS

TermFn = Callable[[RewardInput, RewardConfig], torch.Tensor]
TERMS: dict[str, TermFn] = {}


def register_term(name: str) -> Callable[[TermFn], TermFn]:
    """Decorator adding ``fn`` to :data:`TERMS`; a second term with the same name is an error."""

    def deco(fn: TermFn) -> TermFn:
        if name in TERMS:
            raise ValueError(f"reward term {name!r} is already registered by {TERMS[name].__module__}")
        TERMS[name] = fn
        return fn

    return deco


def verify(inp: RewardInput, verifier: str) -> torch.Tensor:
    """[B] bool verdicts of ``VERIFIERS[verifier](completion, meta["answer"])``."""
    if verifier not in VERIFIERS:
        raise KeyError(f"reward.correctness.verifier={verifier!r} is unknown; choose from {sorted(VERIFIERS)}")
    fn = VERIFIERS[verifier]
    return torch.tensor([fn(c, m["answer"]) for c, m in zip(inp.completions, inp.meta)], dtype=torch.bool)


def compute(inp: RewardInput, cfg: RewardConfig) -> RewardOutput:
    """Verify once, evaluate every configured term once, return ``total = sum_k weight_k * term_k``."""
    unknown = sorted(set(cfg.terms) - set(TERMS))
    if unknown:
        raise KeyError(f"reward.terms names unknown term(s) {unknown}; registered: {sorted(TERMS)}")
    if inp.correct is None:
        inp = dataclasses.replace(inp, correct=verify(inp, cfg.correctness.verifier))
    terms = {name: TERMS[name](inp, cfg).to(torch.float32) for name in cfg.terms}
    total = torch.zeros(len(inp.completions), dtype=torch.float32)
    for name, weight in cfg.terms.items():
        total = total + weight * terms[name]
    return RewardOutput(total=total, correct=inp.correct, terms=terms)
