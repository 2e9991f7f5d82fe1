"""Reward functions users already have, used by import path with no wrapper code.

A user function named ``"module:function"`` (or ``"file.py:function"``) in ``reward.correctness.verifier`` or in
``reward.terms`` may follow any of four conventions, told apart by its parameter names:

=========== ======================================================== ===========================================
convention  signature                                                recognised by
=========== ======================================================== ===========================================
verifier    ``fn(completion, answer) -> bool``                       (Laconic's own, as a verifier)
            ``fn(completion, answer, meta) -> bool``                 a parameter ``meta``: the row's other fields
term        ``fn(inp: RewardInput, cfg: RewardConfig) -> [B]``       (Laconic's own, as a term)
verl        ``compute_score(data_source, solution_str, ground_truth, parameters ``solution_str`` and
            extra_info=None) -> float | {"score": float, ...}``      ``ground_truth``
TRL         ``f(prompts, completions, **kwargs) -> list[float|None]`` parameter ``completions``
=========== ======================================================== ===========================================

verl functions (``verl.utils.reward_score``'s ``default_compute_score`` and custom ``compute_score``) get
``data_source = meta["data_source"]`` (a data file's ``data_source`` column; ``"laconic"`` when the row has
none), ``solution_str`` = the
completion, ``ground_truth = meta["answer"]`` and ``extra_info`` = the row's meta; a dict's ``"score"`` is the
value. TRL reward functions (``GRPOTrainer(reward_funcs=...)``) get the batch: ``prompts`` (``meta["prompt"]``,
``""`` when the row has none), ``completions`` (texts), ``completion_ids`` (None: Laconic's terms see texts) and
every meta key as a column (``answer``, ``uid``, ...); ``None`` means "does not apply to this row" and scores 0,
as TRL's NaN-ignoring sum of reward functions gives it.

As a verifier a score is a verdict: correct when it is > 0 (verl's math scorers return 1 / 0 or 1 / -1).
"""
from __future__ import annotations

import functools
import inspect
from typing import Callable

import torch

from rewards.types import RewardInput


def convention(fn: Callable) -> str:
    """"verl", "trl", "laconic_meta" (a verifier reading the row) or "laconic" (the function's parameter names;
    module docstring)."""
    try:
        names = set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # a builtin or C callable: Laconic's own convention
        return "laconic"
    if {"solution_str", "ground_truth"} <= names:
        return "verl"
    if "completions" in names:
        return "trl"
    if "meta" in names:
        return "laconic_meta"
    return "laconic"


def verl_score(value) -> float:
    """A verl ``compute_score`` result as a float: a number, a bool, or a dict with ``"score"``."""
    if isinstance(value, dict):
        if "score" not in value:
            raise ValueError(f"a verl reward function returned a dict without 'score' (keys {sorted(value)})")
        value = value["score"]
    return float(value)


def _verl_call(fn: Callable, completion: str, meta: dict, data_source: str) -> float:
    return verl_score(fn(data_source=meta.get("data_source", data_source), solution_str=completion,
                         ground_truth=meta["answer"], extra_info=meta))


def _trl_call(fn: Callable, completions: list[str], metas: list[dict]) -> list[float | None]:
    columns = {k: [m.get(k) for m in metas] for k in dict.fromkeys(k for m in metas for k in m)}
    columns.pop("prompt", None)
    out = fn(prompts=[m.get("prompt", "") for m in metas], completions=completions, completion_ids=None, **columns)
    if len(out) != len(completions):
        raise ValueError(f"a TRL reward function returned {len(out)} values for {len(completions)} completions")
    return list(out)


@functools.cache  # adapted once per function: the signature is not inspected again every batch
def as_verifier(fn: Callable, data_source: str = "laconic") -> Callable[[str, object, dict], bool]:
    """``fn`` as ``verdict(completion, answer, meta) -> bool``, whatever its convention."""
    kind = convention(fn)
    if kind == "verl":
        return lambda text, answer, meta: _verl_call(fn, text, {**meta, "answer": answer}, data_source) > 0
    if kind == "trl":
        def trl_verdict(text, answer, meta):
            (v,) = _trl_call(fn, [text], [{**meta, "answer": answer}])
            return v is not None and float(v) > 0
        return trl_verdict
    if kind == "laconic_meta":
        return fn
    return lambda text, answer, meta: fn(text, answer)


@functools.cache
def as_term(fn: Callable, data_source: str = "laconic") -> Callable:
    """``fn`` as a Laconic term ``term(inp, cfg) -> [B]``, whatever its convention."""
    kind = convention(fn)
    if kind == "verl":
        return lambda inp, cfg: torch.tensor([_verl_call(fn, t, m, data_source)
                                              for t, m in zip(inp.completions, inp.meta)], dtype=torch.float32)
    if kind == "trl":
        def trl_term(inp: RewardInput, cfg) -> torch.Tensor:
            values = _trl_call(fn, list(inp.completions), list(inp.meta))
            return torch.tensor([0.0 if v is None else float(v) for v in values], dtype=torch.float32)
        return trl_term
    return fn
