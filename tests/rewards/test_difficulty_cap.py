"""Difficulty-Aware DLER: a tighter cap (factor x max_tokens) for rows of groups at or above the accuracy threshold."""
import pytest
import torch

from rewards import RewardConfig, RewardInput, compute
from rewards.registry import truncated_rows

pytestmark = pytest.mark.unit


def _inp(n, correct, groups, truncated=None, max_tokens=400):
    b = len(n)
    return RewardInput(completions=[""] * b, num_tokens=torch.tensor(n), group_ids=torch.tensor(groups),
                       truncated=torch.tensor(truncated or [False] * b), meta=[{"answer": "0", "uid": "u"}] * b,
                       correct=torch.tensor(correct, dtype=torch.bool), max_tokens=max_tokens)


# group 0: acc 2/3 (easy); group 1: acc .5, a tie with the threshold (easy); group 2: acc 1/3 (hard), row 8 at the cap
N = [150, 250, 300, 250, 300, 100, 250, 300, 400]
C = [1, 1, 0, 0, 1, 1, 0, 0, 0]
G = [0, 0, 0, 1, 1, 2, 2, 2, 2]
T = [False] * 8 + [True]


def test_rows_by_hand():
    cfg = RewardConfig(truncation="zero", difficulty_cap_threshold=0.5)
    got = truncated_rows(_inp(N, C, G, T), cfg).tolist()
    assert got == [False, True, True, True, True, False, False, False, True]


def test_zero_and_scale_treatment():
    inp = _inp(N, C, G, T)
    zero = compute(inp, RewardConfig(truncation="zero", difficulty_cap_threshold=0.5)).total.tolist()
    assert zero == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    scale = compute(inp, RewardConfig(truncation="scale", difficulty_cap_threshold=0.5)).total.tolist()
    assert scale == pytest.approx([1.0, 0.1, 0.0, 0.0, 0.1, 1.0, 0.0, 0.0, 0.0])


def test_factor_threshold_and_off():
    inp = _inp(N, C, G, T)
    assert truncated_rows(inp, RewardConfig(truncation="zero")).tolist() == T  # threshold 0: off
    wide = RewardConfig(truncation="zero", difficulty_cap_threshold=0.5, difficulty_cap_factor=0.7)  # cap 280
    assert truncated_rows(inp, wide).tolist() == [False, False, True, False, True, False, False, False, True]
    strict = RewardConfig(truncation="zero", difficulty_cap_threshold=0.6)  # group 1 (.5) is now hard
    assert truncated_rows(inp, strict).tolist() == [False, True, True] + [False] * 5 + [True]


def test_all_incorrect_and_groups_of_one():
    inp = _inp([300, 300, 300], [0, 0, 1], [0, 0, 1])
    cfg = RewardConfig(truncation="zero", difficulty_cap_threshold=0.5)
    assert truncated_rows(inp, cfg).tolist() == [False, False, True]  # acc 0 never easy; a lone correct row is


def test_needs_max_tokens_and_a_truncation_rule():
    inp = _inp(N, C, G, T, max_tokens=None)
    with pytest.raises(ValueError, match="max_tokens"):
        compute(inp, RewardConfig(truncation="zero", difficulty_cap_threshold=0.5))
    with pytest.raises(ValueError, match="truncation=none"):
        compute(_inp(N, C, G, T), RewardConfig(difficulty_cap_threshold=0.5))
    with pytest.raises(ValueError, match="max_tokens"):
        _inp(N, C, G, T, max_tokens=0)
