"""DOT, Dynamic Outlier Truncation (Wu et al. 2026, "Anti-Length Shift", arXiv 2601.03969; released code
U-rara/DOT @9e6574bd ``projects/dot/length_truncation.py`` ``apply_length_truncation``, defaults from
``projects/dot/runs/run_dot.sh``).

Only groups the policy already solves (verified accuracy >= ``success_threshold``, paper: 1.0, all correct) are
touched. For such a group with lengths ``L_i`` (tokens, EOS included) the cut is

    T = floor(mean(L) + alpha * std(L))          std with the n - 1 denominator; 0 for a group of one

and a completion is cut to its first ``T`` tokens when ``L_i - T >= m``. The cut text is re-verified with the
configured verifier, so a cut inside the thinking normally loses its answer and scores as wrong; the GRPO update
then trains on the ``T`` kept tokens only (``RewardOutput.kept_tokens``). Defaults: alpha = 3, m = 32.

Example (alpha 3, m 32): an all-correct group of 12 with eleven 100-token answers and one of 1000: mean 175,
std sqrt((11 * 75^2 + 825^2) / 11) = 259.81, T = floor(175 + 779.42) = 954; 1000 - 954 = 46 >= 32, so the outlier
is cut to 954 tokens and re-verified. With m = 50 it is kept whole. With alpha = 3 a single outlier can only pass the
cut when the group has at least 11 rows (its z-score is at most (n - 1) / sqrt(n)).

The cut is visible per row in ``RewardOutput.kept_tokens`` (the cut rows keep ``T`` tokens) and per step in the
``rollout/cut_frac`` / ``rollout/cut_len_mean`` metrics (the share of rows cut and their mean ``T``).

``truncated`` (cut at the rollout cap) is left unchanged: the paper re-verifies a DOT cut rather than penalising it,
so DLER's truncation rule does not apply to it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from rewards.groups import group_mean, group_std
from rewards.registry import register_transform, verify_texts
from rewards.types import RewardInput

if TYPE_CHECKING:
    from rewards.config import RewardConfig


@dataclass
class DOTConfig:
    alpha: float = 3.0  # alpha in the cut T = floor(mean + alpha * std) of a group's lengths (Wu et al. 2026)
    min_tokens: int = 32  # m: a completion is cut only when n - T >= m tokens
    success_threshold: float = 1.0  # groups whose verified accuracy is >= this are eligible (1.0 = all correct)


def cut_lengths(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """[B] long tokens to keep per row: ``T`` of its group where DOT cuts it, else ``num_tokens``."""
    d = cfg.dot
    n = inp.num_tokens.to(torch.float64)
    eligible = group_mean(inp.correct, inp.group_ids) >= d.success_threshold
    cut_at = torch.floor(group_mean(n, inp.group_ids) + d.alpha * group_std(n, inp.group_ids))
    cut = eligible & (cut_at < n) & (n - cut_at >= d.min_tokens)
    return torch.where(cut, cut_at, n).to(torch.long)


@register_transform("dot", config=DOTConfig)
def dot(inp: RewardInput, cfg: RewardConfig) -> RewardInput:
    """The input with DOT's outliers cut at a token boundary (``token_offsets``) and re-verified."""
    if inp.correct is None:
        raise ValueError("the dot transform needs a verified RewardInput (rewards.compute verifies first)")
    if inp.token_offsets is None:
        raise ValueError("the dot transform needs RewardInput.token_offsets (character offset of every token)")
    kept = cut_lengths(inp, cfg)
    rows = (kept < inp.num_tokens).nonzero().flatten().tolist()
    if not rows:
        return inp
    texts, offsets = list(inp.completions), list(inp.token_offsets)
    for i in rows:
        k = int(kept[i])
        texts[i] = texts[i][:offsets[i][k]] if k < len(offsets[i]) else texts[i]
        offsets[i] = offsets[i][:k]
    correct = inp.correct.clone()
    correct[rows] = verify_texts([texts[i] for i in rows], [inp.meta[i]["answer"] for i in rows],
                                 cfg.correctness.verifier, cfg.timeout_s)[0]  # a failed call is a False verdict
    return dataclasses.replace(inp, completions=texts, num_tokens=kept, token_offsets=offsets, correct=correct)
