"""Advantage estimators against numbers derived by hand."""
import math

import pytest
import torch

from trainers.advantages import ADVANTAGE, group_stats
from trainers.config import AlgoConfig
from trainers.types import AdvantageInput


def _inp(rewards, groups, width=3):
    r = torch.tensor(rewards, dtype=torch.float32)
    mask = torch.ones(len(rewards), width, dtype=torch.bool)
    mask[0, -1] = False  # padding must stay zero
    return AdvantageInput(rewards=r, group_ids=torch.tensor(groups), mask=mask)


def test_grpo_std_scaled_by_hand():
    # group 0: r = [1,0,0,1] mean .5, unbiased std sqrt(1/3)=.57735 -> +-.866; group 1 all equal -> 0
    adv = ADVANTAGE["grpo"](_inp([1, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]), AlgoConfig(std_eps=0.0))
    a = 0.5 / math.sqrt(1 / 3)
    assert adv[:, 0].tolist() == pytest.approx([a, -a, -a, a, 0, 0], abs=1e-5)
    assert adv[0, -1] == 0 and adv[1, -1] == pytest.approx(-a, abs=1e-5)


def test_grpo_without_std_is_dr_grpo():
    inp = _inp([3, 1, 2, 2], [7, 7, 9, 9])
    a = ADVANTAGE["grpo"](inp, AlgoConfig(scale_std=False))
    b = ADVANTAGE["dr_grpo"](inp, AlgoConfig())
    assert a[:, 1].tolist() == pytest.approx([1, -1, 0, 0])
    assert torch.equal(a, b)


def test_rloo_leave_one_out_by_hand():
    # r=[1,0,0,1]: 1 - (0+0+1)/3 = 2/3 ; 0 - 2/3 = -2/3 ; a group of one gets 0
    adv = ADVANTAGE["rloo"](_inp([1, 0, 0, 1, 5], [0, 0, 0, 0, 1]), AlgoConfig())
    assert adv[:, 1].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0], abs=1e-6)


def test_group_of_one_gets_zero_not_nan():
    adv = ADVANTAGE["grpo"](_inp([1.0, 0.0], [0, 1]), AlgoConfig())
    assert torch.isfinite(adv).all() and adv.abs().sum() == 0


def test_group_stats_non_contiguous_ids():
    mean, std, count = group_stats(torch.tensor([1.0, 5.0, 3.0, 7.0]), torch.tensor([4, 2, 4, 2]))
    assert mean.tolist() == [2.0, 6.0, 2.0, 6.0]
    assert std.tolist() == pytest.approx([math.sqrt(2)] * 4)
    assert count.tolist() == [2, 2, 2, 2]


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGE.register("grpo")(lambda i, c: None)
