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

TermFn = Callable[..., torch.Tensor]
TERMS: dict[str, TermFn] = {}
STATE_TYPES: dict[str, type] = {}  # stateful terms: name -> state class (state_dict / load_state_dict / observe / apply)
TOKEN_LEVEL: set[str] = set()  # terms returning [B,T] token rewards instead of [B]


def register_term(name: str, state: type | None = None, token_level: bool = False) -> Callable[[TermFn], TermFn]:
    """Decorator adding ``fn`` to :data:`TERMS`; a second term with the same name is an error.

    A stateful term declares its ``state`` class and is called ``fn(inp, cfg, state)``; the state is read, never
    written, while rewards are computed (every reward of a batch sees the state from before the batch).
    """

    def deco(fn: TermFn) -> TermFn:
        if name in TERMS:
            raise ValueError(f"reward term {name!r} is already registered by {TERMS[name].__module__}")
        TERMS[name] = fn
        if token_level:
            TOKEN_LEVEL.add(name)
        if state is not None:
            STATE_TYPES[name] = state
        return fn

    return deco


def make_states(cfg: RewardConfig) -> dict[str, object]:
    """Fresh state objects for the stateful terms ``cfg`` uses (the trainer checkpoints them)."""
    return {name: STATE_TYPES[name](cfg) for name in cfg.terms if name in STATE_TYPES}


def observe(inp: RewardInput, states: dict[str, object]) -> dict[str, object]:
    """Each state's local update from a verified batch (picklable), to be gathered over ranks and applied."""
    if inp.correct is None:
        raise ValueError("observe() needs a verified RewardInput (RewardOutput.input)")
    return {name: st.observe(inp) for name, st in states.items()}


def apply(states: dict[str, object], updates: list[dict[str, object]]) -> None:
    """Apply the local updates of every rank (in rank order) to the states."""
    for name, st in states.items():
        st.apply([u[name] for u in updates])


def verify(inp: RewardInput, verifier: str) -> torch.Tensor:
    """[B] bool verdicts of ``VERIFIERS[verifier](completion, meta["answer"])``."""
    if verifier not in VERIFIERS:
        raise KeyError(f"reward.correctness.verifier={verifier!r} is unknown; choose from {sorted(VERIFIERS)}")
    fn = VERIFIERS[verifier]
    return torch.tensor([fn(c, m["answer"]) for c, m in zip(inp.completions, inp.meta)], dtype=torch.bool)


def compute(inp: RewardInput, cfg: RewardConfig, states: dict[str, object] | None = None) -> RewardOutput:
    """Verify once, evaluate every configured term once, return ``total = sum_k weight_k * term_k``, then apply the
    truncation rule: ``zero`` sets a truncated completion's reward to 0 (DLER paper), ``scale`` multiplies it by
    ``truncation_scale`` (DLER's released code: 0.1 x its score)."""
    unknown = sorted(set(cfg.terms) - set(TERMS))
    if unknown:
        raise KeyError(f"reward.terms names unknown term(s) {unknown}; registered: {sorted(TERMS)}")
    if inp.correct is None:
        inp = dataclasses.replace(inp, correct=verify(inp, cfg.correctness.verifier))
    states = states or {}
    terms = {}
    for name in cfg.terms:
        if name in STATE_TYPES:
            if name not in states:
                raise KeyError(f"reward term {name!r} is stateful: pass its state (rewards.make_states(cfg))")
            terms[name] = TERMS[name](inp, cfg, states[name]).to(torch.float32)
        else:
            terms[name] = TERMS[name](inp, cfg).to(torch.float32)
    total = torch.zeros(len(inp.completions), dtype=torch.float32)
    token_rewards = None
    for name, weight in cfg.terms.items():
        if name in TOKEN_LEVEL:  # [B,T]: summed into token_rewards; its per-sequence mean goes into total
            tr = weight * terms[name]
            token_rewards = tr if token_rewards is None else token_rewards + tr
            valid = torch.arange(tr.shape[1])[None, :] < inp.num_tokens[:, None]
            terms[name] = (terms[name] * valid).sum(-1) / valid.sum(-1).clamp(min=1)
        total = total + weight * terms[name]
    total = _truncation(total, inp.truncated, cfg)
    if token_rewards is not None:
        token_rewards = _truncation(token_rewards, inp.truncated[:, None].expand_as(token_rewards), cfg)
    return RewardOutput(total=total, correct=inp.correct, terms=terms, token_rewards=token_rewards, input=inp)


def _truncation(total: torch.Tensor, truncated: torch.Tensor, cfg: RewardConfig) -> torch.Tensor:
    if cfg.truncation == "none":
        return total
    if cfg.truncation == "zero":
        return torch.where(truncated, torch.zeros_like(total), total)
    if cfg.truncation == "scale":
        return torch.where(truncated, cfg.truncation_scale * total, total)
    raise ValueError(f"reward.truncation={cfg.truncation!r} is not one of ['none', 'scale', 'zero']")
