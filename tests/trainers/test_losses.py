"""PPO-clip with decoupled bounds against hand-computed values."""
import math

import pytest
import torch

from trainers.config import AlgoConfig
from trainers.losses import LOSS
from trainers.types import LossInput


def _loss(ratio, adv, lo=0.2, hi=0.28):
    old = torch.zeros(1, len(ratio))
    lp = torch.log(torch.tensor([ratio], dtype=torch.float32))
    out = LOSS["ppo_clip"](LossInput(logprobs=lp, old_logprobs=old, advantages=torch.tensor([adv]),
                                     mask=torch.ones(1, len(ratio), dtype=torch.bool)), AlgoConfig(clip_low=lo, clip_high=hi))
    return out


def test_positive_advantage_clips_above_at_clip_high():
    out = _loss([1.5, 1.1, 0.5], [1.0, 1.0, 1.0])
    # 1.5 -> min(1.5, 1.28) = 1.28 ; 1.1 inside ; 0.5 -> min(0.5, 0.8) = 0.5 (pessimistic, unclipped)
    assert out.per_token[0].tolist() == pytest.approx([-1.28, -1.1, -0.5], abs=1e-6)
    assert out.metrics["clip_frac"][0].tolist() == [1.0, 0.0, 0.0]


def test_negative_advantage_clips_below_at_clip_low():
    out = _loss([0.5, 1.5], [-2.0, -2.0])
    # 0.5: min(-1.0, 0.8*-2=-1.6) = -1.6 -> loss 1.6 ; 1.5: min(-3, 1.28*-2=-2.56) = -3 -> loss 3
    assert out.per_token[0].tolist() == pytest.approx([1.6, 3.0], abs=1e-6)


def test_gradient_vanishes_when_clipped_and_flows_otherwise():
    lp = torch.log(torch.tensor([[1.5, 1.1]])).requires_grad_(True)
    out = LOSS["ppo_clip"](LossInput(logprobs=lp, old_logprobs=torch.zeros(1, 2), advantages=torch.ones(1, 2),
                                     mask=torch.ones(1, 2, dtype=torch.bool)), AlgoConfig(clip_high=0.28))
    out.per_token.sum().backward()
    # d/dlp of -rho*A = -rho : 0 for the clipped token, -1.1 for the other
    assert lp.grad[0].tolist() == pytest.approx([0.0, -1.1], abs=1e-6)


def test_masked_tokens_contribute_nothing():
    out = LOSS["ppo_clip"](LossInput(logprobs=torch.tensor([[0.3, math.log(9.0)]]), old_logprobs=torch.zeros(1, 2),
                                     advantages=torch.ones(1, 2), mask=torch.tensor([[True, False]])), AlgoConfig())
    assert out.per_token[0, 1] == 0 and out.metrics["clip_frac"][0, 1] == 0
