"""PPO-clip with decoupled bounds against hand-computed values."""
import math

import pytest
import torch

from trainers.algo.config import AlgoConfig
from trainers.algo.losses import LOSS
from trainers.algo.types import LossInput

pytestmark = pytest.mark.unit


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


# ------------------------------------------------------------------------------------------ KL estimators
def test_kl_estimators_by_hand():
    from trainers.algo.losses import KL

    lp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert KL["k1"](lp, ref).item() == pytest.approx(math.log(2))
    assert KL["k2"](lp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert KL["k3"](lp, ref).item() == pytest.approx(0.5 - 1 + math.log(2))  # r = .5: r - 1 - log r


def test_k3_is_unbiased_for_kl_and_nonnegative():
    from trainers.algo.losses import KL

    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.4, 0.4, 0.2])
    exact = float((p * (p / q).log()).sum())
    per = KL["k3"](p.log(), q.log())
    assert (per >= 0).all() and float((p * per).sum()) == pytest.approx(exact, abs=1e-6)
    assert float((p * KL["k1"](p.log(), q.log())).sum()) == pytest.approx(exact, abs=1e-6)


# ------------------------------------------------------------------------------ sampler mismatch correction
def _is(kind, log_ratios, cap=2.0, mask=None):
    from trainers.algo.losses import SAMPLER_CORRECTION

    lr = torch.tensor([log_ratios])
    m = torch.ones_like(lr, dtype=torch.bool) if mask is None else torch.tensor([mask])
    return SAMPLER_CORRECTION[kind](lr, torch.zeros_like(lr), m, cap)


def test_token_tis_truncates_at_cap():
    out = _is("token_tis", [0.1, 1.0, -1.0])
    assert out.weights[0].tolist() == pytest.approx([math.exp(0.1), 2.0, math.exp(-1.0)], abs=1e-6)
    assert out.keep.all()


def test_token_mis_rejects_outside_band_from_numerator_and_denominator():
    out = _is("token_mis", [0.1, 1.0, -1.0])  # ratios 1.105, 2.718 (> 2), 0.368 (< 1/2)
    assert out.keep[0].tolist() == [True, False, False]
    assert out.weights[0].tolist() == pytest.approx([math.exp(0.1), 0.0, 0.0], abs=1e-6)


def test_seq_tis_uses_the_product_over_the_row_and_ignores_padding():
    out = _is("seq_tis", [0.3, 0.5, 7.0], mask=[True, True, False])  # exp(.8) = 2.2255 -> capped at 2
    assert out.weights[0].tolist() == pytest.approx([2.0, 2.0, 0.0])
    inside = _is("seq_tis", [0.3, -0.1])
    assert inside.weights[0].tolist() == pytest.approx([math.exp(0.2)] * 2, abs=1e-6)


def test_seq_mis_rejects_whole_rows():
    out = _is("seq_mis", [0.5, 0.5])  # exp(1) > 2
    assert not out.keep.any() and (out.weights == 0).all()
    assert _is("seq_mis", [0.2, 0.2]).keep.all()


# ------------------------------------------------------------------------------------------ value loss
def test_clipped_value_loss_by_hand():
    from trainers.algo.losses import clipped_value_loss

    v, old, ret = torch.tensor([[1.0, 0.1]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])
    out = clipped_value_loss(v, old, ret, torch.ones(1, 2, dtype=torch.bool), clip=0.2)
    # token 0: unclipped (1-2)^2 = 1, clipped (.2-2)^2 = 3.24 -> .5 * 3.24 ; token 1: both .01 -> .005
    assert out.per_token[0].tolist() == pytest.approx([1.62, 0.005])
    assert out.metrics["vf_clip_frac"][0].tolist() == [1.0, 0.0]
