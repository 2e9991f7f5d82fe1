"""Advantage estimators against numbers derived by hand."""
import math
from dataclasses import replace

import pytest
import torch

from trainers.algo.advantages import ADVANTAGE, group_stats
from trainers.algo.config import AlgoConfig
from trainers.algo.types import AdvantageInput



def _inp(rewards, groups, width=3):
    r = torch.tensor(rewards, dtype=torch.float32)
    mask = torch.ones(len(rewards), width, dtype=torch.bool)
    mask[0, -1] = False  # padding must stay zero
    return AdvantageInput(rewards=r, group_ids=torch.tensor(groups), mask=mask)


@pytest.mark.unit
def test_grpo_std_scaled_by_hand():
    # group 0: r = [1,0,0,1] mean .5, unbiased std sqrt(1/3)=.57735 -> +-.866; group 1 all equal -> 0
    adv = ADVANTAGE["grpo"](_inp([1, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]), AlgoConfig(std_eps=0.0))
    a = 0.5 / math.sqrt(1 / 3)
    assert adv[:, 0].tolist() == pytest.approx([a, -a, -a, a, 0, 0], abs=1e-5)
    assert adv[0, -1] == 0 and adv[1, -1] == pytest.approx(-a, abs=1e-5)


@pytest.mark.unit
def test_grpo_without_std_is_dr_grpo():
    inp = _inp([3, 1, 2, 2], [7, 7, 9, 9])
    a = ADVANTAGE["grpo"](inp, AlgoConfig(scale_std=False))
    b = ADVANTAGE["dr_grpo"](inp, AlgoConfig())
    assert a[:, 1].tolist() == pytest.approx([1, -1, 0, 0])
    assert torch.equal(a, b)


@pytest.mark.unit
def test_rloo_leave_one_out_by_hand():
    # r=[1,0,0,1]: 1 - (0+0+1)/3 = 2/3 ; 0 - 2/3 = -2/3 ; a group of one gets 0
    adv = ADVANTAGE["rloo"](_inp([1, 0, 0, 1, 5], [0, 0, 0, 0, 1]), AlgoConfig())
    assert adv[:, 1].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0], abs=1e-6)


@pytest.mark.unit
def test_group_of_one_gets_zero_not_nan():
    adv = ADVANTAGE["grpo"](_inp([1.0, 0.0], [0, 1]), AlgoConfig())
    assert torch.isfinite(adv).all() and adv.abs().sum() == 0


@pytest.mark.unit
def test_group_stats_non_contiguous_ids():
    mean, std, count = group_stats(torch.tensor([1.0, 5.0, 3.0, 7.0]), torch.tensor([4, 2, 4, 2]))
    assert mean.tolist() == [2.0, 6.0, 2.0, 6.0]
    assert std.tolist() == pytest.approx([math.sqrt(2)] * 4)
    assert count.tolist() == [2, 2, 2, 2]


@pytest.mark.unit
def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        ADVANTAGE.register("grpo")(lambda i, c: None)


@pytest.mark.unit
def test_dler_batch_sequence_form_by_hand():
    inp = AdvantageInput(rewards=torch.tensor([1.0, 0.0, 1.0, 1.0]), group_ids=torch.tensor([0, 0, 1, 1]),
                         mask=torch.ones(4, 2, dtype=torch.bool))
    adv = ADVANTAGE["dler_batch"](inp, AlgoConfig(whiten="sequence", whiten_eps=0.0))
    a = 0.5 / math.sqrt(1 / 6)
    assert adv[:, 0].tolist() == pytest.approx([a, -a, 0.0, 0.0], abs=1e-5)


@pytest.mark.unit
def test_dler_batch_group_of_one_keeps_its_reward_as_dlers_code():
    """NVlabs/DLER @498b8ed6 reinforce_plus_plus_baseline: a group of one has baseline 0, then token whitening.
    Group A: r = 1 (2 tokens), 0 (3 tokens); group B: r = .1 (1 token) -> c = [.5, -.5, .1] on tokens
    [.5, .5, -.5, -.5, -.5, .1]: mu = -.066667, unbiased var = .246667 -> A = [1.1410, -0.8729, 0.3356]."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    inp = AdvantageInput(rewards=torch.tensor([1.0, 0.0, 0.1]), group_ids=torch.tensor([0, 0, 1]), mask=mask)
    adv = ADVANTAGE["dler_batch"](inp, AlgoConfig(whiten="token", whiten_eps=1e-8))
    assert adv[0, :2].tolist() == pytest.approx([1.1410, 1.1410], abs=1e-3)
    assert adv[1].tolist() == pytest.approx([-0.8729] * 3, abs=1e-3)
    assert float(adv[2, 0]) == pytest.approx(0.3356, abs=1e-3) and float(adv[2, 1:].abs().sum()) == 0.0


@pytest.mark.unit
def test_dler_batch_token_form_weights_sequences_by_length():
    # centred a = [.5, -.5] with 3 and 1 valid tokens: token mean = (1.5 - .5)/4 = .25,
    # token var = (3*(.25)^2 + (-.75)^2)/(4-1) = .25 -> A = [(.5-.25)/.5, (-.5-.25)/.5] = [.5, -1.5]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    inp = AdvantageInput(rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]), mask=mask)
    adv = ADVANTAGE["dler_batch"](inp, AlgoConfig(whiten="token", whiten_eps=0.0))
    assert adv[0].tolist() == pytest.approx([0.5] * 3) and adv[1].tolist() == pytest.approx([-1.5, 0, 0])


def _dler_inputs():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (8,), generator=g).float()
    mask = torch.rand(8, 5, generator=g) > 0.3
    mask[:, 0] = True
    return r, torch.arange(8) // 4, mask


def _dler_rank(rank, port, q):
    import os

    import torch.distributed as dist

    from trainers.backend.distributed import all_sum

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    r, gid, mask = _dler_inputs()
    sl = slice(4 * rank, 4 * rank + 4)  # one group per rank
    adv = ADVANTAGE["dler_batch"](AdvantageInput(r[sl], gid[sl], mask[sl], all_sum=all_sum), AlgoConfig())
    q.put((rank, adv))
    dist.destroy_process_group()


def test_dler_batch_on_two_real_ranks_equals_one_rank():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_dler_rank, args=(k, port, q)) for k in range(2)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=120) for _ in range(2))
    for p in procs:
        p.join(60)
    r, gid, mask = _dler_inputs()
    whole = ADVANTAGE["dler_batch"](AdvantageInput(r, gid, mask), AlgoConfig())
    torch.testing.assert_close(torch.cat([got[0], got[1]]), whole)


def _decs_rows():
    """DECS's beta = .1, L_max = 5: rows correct n=2, wrong n=3, correct n=4 with tokens 2-3 redundant (1.02)."""
    r = torch.tensor([[1.1, 1.1, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.1, 1.1, 1.02, 1.02]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    return r, mask


@pytest.mark.unit
def test_token_group_is_decs_grpo_proc_length_by_hand():
    """pixas/DECS @0d12e536 compute_grpo_proc_length_advantage_return: every row of the group counts at every
    position (past its end with its fill, 1.1 correct / 0 wrong), sample std (n - 1), A = (R - mu) / (sigma + 1e-6)."""
    r, mask = _decs_rows()
    adv = ADVANTAGE["token_group"](AdvantageInput(rewards=torch.zeros(3), group_ids=torch.zeros(3, dtype=torch.long),
                                                  mask=mask, token_rewards=r), AlgoConfig(std_eps=1e-6))
    # positions 0-1: R = (1.1, 0, 1.1): mu = .73333, sigma = sqrt((2 * .36667^2 + .73333^2) / 2) = .63509
    # position 2: R = (1.1 fill, 0, 1.02): mu = .70667, sigma = .61330; position 3: (1.1 fill, 0 fill, 1.02): same
    assert adv[0].tolist() == pytest.approx([0.57735, 0.57735, 0.0, 0.0], abs=1e-4)
    assert adv[1].tolist() == pytest.approx([-1.15470, -1.15470, -1.15224, 0.0], abs=1e-4)
    assert adv[2].tolist() == pytest.approx([0.57735, 0.57735, 0.51090, 0.51090], abs=1e-4)


@pytest.mark.unit
def test_token_group_longest_tail_is_compared_with_its_siblings_fill():
    """All correct: the shared positions are equal (A = 0); the longest rollout's redundant tail past its siblings'
    ends meets their fill 1.1, so it gets a negative advantage (population statistics over the rows still running
    gave it 0)."""
    r = torch.tensor([[1.1, 1.1, 0.0, 0.0], [1.1, 1.1, 1.1, 0.0], [1.1, 1.1, 1.02, 1.02]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    adv = ADVANTAGE["token_group"](AdvantageInput(rewards=torch.zeros(3), group_ids=torch.zeros(3, dtype=torch.long),
                                                  mask=mask, token_rewards=r), AlgoConfig(std_eps=1e-6))
    # positions 2-3: (1.1, 1.1, 1.02): mu = 1.07333, sigma = .04619 -> C = -1.1547, B (pos 2) = +.57735
    assert adv[:, :2].abs().max() == 0
    assert adv[2, 2:].tolist() == pytest.approx([-1.1547, -1.1547], abs=1e-3)
    assert float(adv[1, 2]) == pytest.approx(0.57735, abs=1e-3) and float(adv[1, 3]) == 0.0


@pytest.mark.unit
def test_token_group_group_of_one_is_its_reward():
    r = torch.tensor([[2.0, 2.0, 2.0]])
    adv = ADVANTAGE["token_group"](AdvantageInput(rewards=torch.zeros(1), group_ids=torch.tensor([5]),
                                                  mask=torch.ones(1, 3, dtype=torch.bool), token_rewards=r),
                                   AlgoConfig(std_eps=1e-6))
    assert adv[0].tolist() == pytest.approx([2.0, 2.0, 2.0], abs=1e-5)  # mu = 0, sigma = 1


@pytest.mark.unit
def test_token_group_without_token_rewards_is_an_error():
    with pytest.raises(ValueError, match="token-level"):
        ADVANTAGE["token_group"](_inp([1, 0], [0, 0]), AlgoConfig())


# ------------------------------------------------------------------------------------------------------ GAE
def _gae(r, v, mask, gamma=1.0, lam=1.0, token_rewards=None):
    inp = AdvantageInput(rewards=torch.tensor(r, dtype=torch.float32), group_ids=torch.arange(len(r)),
                         mask=torch.tensor(mask, dtype=torch.bool), values=torch.tensor(v),
                         token_rewards=None if token_rewards is None else torch.tensor(token_rewards))
    return ADVANTAGE["gae"](inp, AlgoConfig(gamma=gamma, lam=lam))


@pytest.mark.unit
def test_gae_outcome_reward_gamma_lambda_one_is_return_minus_value():
    # r on the last token only; gamma = lam = 1 -> A_t = R - V_t
    adv = _gae([1.0], [[0.5, 0.25, 0.0]], [[1, 1, 1]])
    assert adv[0].tolist() == pytest.approx([0.5, 0.75, 1.0])


@pytest.mark.unit
def test_gae_by_hand_with_discount_and_padding():
    # row 0: 2 valid tokens, r = [0, 1], V = [.5, .4], gamma .9, lam .8
    #   delta_1 = 1 - .4 = .6 ; delta_0 = 0 + .9*.4 - .5 = -.14 ; A_1 = .6 ; A_0 = -.14 + .72*.6 = .292
    # the padded third position (V = 9, must not leak) gets 0
    adv = _gae([1.0, 0.0], [[0.5, 0.4, 9.0], [0.0, 0.0, 0.0]], [[1, 1, 0], [1, 1, 1]], gamma=0.9, lam=0.8)
    assert adv[0].tolist() == pytest.approx([0.292, 0.6, 0.0], abs=1e-6)
    assert adv[1].tolist() == pytest.approx([0.0, 0.0, 0.0])


@pytest.mark.unit
def test_gae_uses_dense_token_rewards_when_given():
    # token rewards [.1, .2] (e.g. a KL penalty folded in), V = 0, gamma = lam = 1 -> A = suffix sums [.3, .2]
    adv = _gae([5.0], [[0.0, 0.0]], [[1, 1]], token_rewards=[[0.1, 0.2]])
    assert adv[0].tolist() == pytest.approx([0.3, 0.2], abs=1e-6)


@pytest.mark.unit
def test_gae_without_values_is_an_error():
    with pytest.raises(ValueError, match="critic values"):
        ADVANTAGE["gae"](_inp([1, 0], [0, 0]), AlgoConfig())


@pytest.mark.unit
def test_masked_whiten_by_hand():
    from trainers.algo.advantages import masked_whiten

    x = torch.tensor([[1.0, 3.0], [5.0, 100.0]])
    out = masked_whiten(x, torch.tensor([[True, True], [True, False]]), eps=0.0)
    assert out.flatten().tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0])


@pytest.mark.unit
def test_dler_correct_boost_by_hand():
    """NVlabs/DLER @498b8ed6 dp_actor.boost_high_score_advantages with dler.sh's value 0.1 (threshold 1.0): +0.1 on
    every token of a row whose pre-penalty score is >= 1 - 1e-5, whatever its reward after the truncation rule."""
    from trainers.algo.advantages import boost_correct

    adv = torch.tensor([[0.5, 0.5, 0.5], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.2]])
    scores = torch.tensor([1.0, 0.999995, 0.9999, 0.0])  # row 1 within 1e-5 of the threshold; row 2 not
    mask = torch.ones(4, 3, dtype=torch.bool)
    mask[0, 2] = False
    out = boost_correct(adv, scores, mask, 0.1, 1.0)
    assert torch.allclose(out, torch.tensor([[0.6, 0.6, 0.0], [-0.9, -0.9, -0.9], [0.0, 0.0, 0.0], [0.2, 0.2, 0.2]]))


@pytest.mark.unit
def test_advantage_phase_boosts_on_the_score_not_the_truncated_reward():
    """In the trainer's phase 5 the boost reads RewardOutput.score: a correct completion cut at the cap (reward 0 after
    DLER's truncation rule, score 1) is boosted; the r1_1p5b_dler recipe turns it on with DLER's 0.1."""
    from types import SimpleNamespace

    from recipes.loader import load
    from rewards.types import RewardOutput
    from trainers.rl import Trainer
    from trainers.update import Forward

    cfg, _ = load("r1_1p5b_dler", [])
    assert cfg.algo.correct_boost == 0.1 and cfg.algo.correct_boost_threshold == 1.0
    mask = torch.ones(4, 2, dtype=torch.bool)
    batch = SimpleNamespace(group_ids=torch.tensor([0, 0, 1, 1]), completion_mask=mask)
    rewards = RewardOutput(total=torch.tensor([1.0, 0.0, 0.0, 1.0]), correct=torch.tensor([True, True, False, True]),
                           score=torch.tensor([1.0, 1.0, 0.0, 1.0]))
    fwd = Forward(old_logprobs=None, ref_logprobs=None, values=None, is_weights=None)
    plain = SimpleNamespace(cfg=SimpleNamespace(algo=replace(cfg.algo, correct_boost=0.0)))
    boosted = SimpleNamespace(cfg=cfg)
    a0, _ = Trainer.advantage_phase(plain, batch, rewards, fwd)
    a1, _ = Trainer.advantage_phase(boosted, batch, rewards, fwd)
    assert torch.allclose(a1 - a0, torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.0, 0.0], [0.1, 0.1]]))
