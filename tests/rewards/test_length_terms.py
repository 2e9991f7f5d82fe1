"""Length terms against numbers derived by hand, including the edge cases each paper's code handles."""
import math

import pytest
import torch

from rewards import RewardConfig, RewardInput, apply, compute, make_states, observe

pytestmark = pytest.mark.unit


def _inp(n, correct, groups=None, targets=None, truncated=None, uids=None):
    b = len(n)
    meta = [{"answer": "0", "uid": (uids or [f"u{g}" for g in (groups or [0] * b)])[i]} for i in range(b)]
    if targets is not None:
        for m, t in zip(meta, targets):
            m["target_tokens"] = t
    return RewardInput(completions=[""] * b, num_tokens=torch.tensor(n), group_ids=torch.tensor(groups or [0] * b),
                       truncated=torch.tensor(truncated or [False] * b), meta=meta,
                       correct=torch.tensor(correct, dtype=torch.bool))


def _term(name, inp, states=None, **cfg_kw):
    cfg = RewardConfig(terms={name: 1.0}, **cfg_kw)
    return compute(inp, cfg, states).total.tolist()


def test_lcpo_exact_by_hand_and_rows_without_target():
    got = _term("lcpo_exact", _inp([150, 100, 50, 80], [1, 0, 1, 1], targets=[100, 100, 100, None]))
    assert got == pytest.approx([1 - 0.015, -0.0, 1 - 0.015, 1.0])


def test_lcpo_exact_is_unclipped():
    assert _term("lcpo_exact", _inp([10000], [1], targets=[100])) == pytest.approx([1 - 0.0003 * 9900])


def test_lcpo_max_by_hand():
    got = _term("lcpo_max", _inp([100, 0, 700, 100, 400, 30], [1, 1, 1, 0, 1, 1],
                                 targets=[100, 100, 100, 100, None, 100]))
    # .5 at the target; .6 when 100 under (clip 1 needs 500 under); 0 when 600 over; wrong -> 0; no target -> c
    assert got == pytest.approx([0.5, 0.6, 0.0, 0.0, 1.0, 0.57])


def test_shorterbetter_sol_is_shortest_correct_or_group_mean():
    inp = _inp([100, 300, 200, 100, 300, 50], [0, 1, 1, 0, 0, 1], groups=[0, 0, 0, 1, 1, 2])
    got = _term("shorterbetter", inp)
    # group 0: SOL=200 (shortest correct) ; group 1 all wrong: SOL=mean=200 ; group 2 of one: SOL=50
    assert got == pytest.approx([-0.1, 2 - 0.1, 2.0, -0.1, -0.1, 2.0])


def test_kimi_by_hand_and_equal_lengths():
    got = _term("kimi", _inp([100, 200, 300, 300, 50, 50], [1, 1, 0, 1, 0, 1], groups=[0, 0, 0, 0, 1, 1]))
    assert got == pytest.approx([0.5, 0.0, -0.5, -0.5, 0.0, 0.0])
    assert _term("kimi", _inp([100, 200], [0, 0], groups=[0, 0])) == pytest.approx([0.0, -0.5])  # wrong: min(0, lambda)


def test_truncation_rules():
    inp = _inp([512, 100], [1, 1], truncated=[True, False])
    assert compute(inp, RewardConfig(truncation="zero")).total.tolist() == [0.0, 1.0]
    assert compute(inp, RewardConfig(truncation="scale")).total.tolist() == pytest.approx([0.1, 1.0])
    assert compute(inp, RewardConfig()).total.tolist() == [1.0, 1.0]


def test_hapo_empty_history_then_cosine_by_hand():
    cfg = RewardConfig(terms={"correctness": 1.0, "hapo": 1.0})
    states = make_states(cfg)
    first = _inp([120, 100, 300], [1, 1, 0], uids=["a", "a", "a"])
    out = compute(first, cfg, states)
    assert out.terms["hapo"].tolist() == [0.0, 0.0, 0.0]  # no history yet
    apply(states, [observe(out.input, states)])
    assert states["hapo"].h == {"a": 100.0}  # shortest correct
    second = _inp([50, 100, 200, 50, 150], [1, 1, 1, 0, 0], uids=["a"] * 5)
    got = compute(second, cfg, states).terms["hapo"].tolist()
    c = math.cos(math.pi / 4)
    assert got == pytest.approx([c, 0.0, -0.7, 0.0, -c], abs=1e-6)


def test_hapo_batch_uses_history_from_before_the_batch():
    cfg = RewardConfig(terms={"hapo": 1.0})
    states = make_states(cfg)
    states["hapo"].h = {"a": 100.0}
    out = compute(_inp([40, 100], [1, 1], uids=["a", "a"]), cfg, states)
    assert out.terms["hapo"][1] == pytest.approx(0.0)  # not judged against the 40 of the same batch
    apply(states, [observe(out.input, states)])
    assert states["hapo"].h["a"] == 40.0


def test_hapo_ranks_reduce_with_min_and_mean():
    cfg = RewardConfig(terms={"hapo": 1.0})
    st = make_states(cfg)
    r0 = observe(compute(_inp([90, 70], [1, 1], uids=["a", "b"]), cfg, st).input, st)
    r1 = observe(compute(_inp([60, 80], [1, 0], uids=["a", "b"]), cfg, st).input, st)
    apply(st, [r0, r1])
    assert st["hapo"].h == {"a": 60.0, "b": 70.0}
    from rewards.config import HAPOConfig

    cfgm = RewardConfig(terms={"hapo": 1.0}, hapo=HAPOConfig(mode="mean"))
    sm = make_states(cfgm)
    apply(sm, [{"hapo": {"a": (90.0, 90.0 + 110.0, 2)}}, {"hapo": {"a": (60.0, 60.0, 1)}}])
    assert sm["hapo"].h["a"] == pytest.approx(260 / 3)
    apply(sm, [{"hapo": {"a": (100.0, 100.0, 1)}}])
    assert sm["hapo"].h["a"] == pytest.approx(360 / 4)


def test_hapo_state_round_trip():
    cfg = RewardConfig(terms={"hapo": 1.0})
    st = make_states(cfg)
    st["hapo"].h = {"x": 12.0}
    fresh = make_states(cfg)
    fresh["hapo"].load_state_dict(st["hapo"].state_dict())
    assert fresh["hapo"].h == {"x": 12.0}


def test_stateful_term_without_state_is_an_error():
    with pytest.raises(KeyError, match="stateful"):
        compute(_inp([1], [1]), RewardConfig(terms={"hapo": 1.0}))


@pytest.mark.unit
def test_shorterbetter_as_its_released_reward_manager():
    """JingyangYi/ShorterBetter @b7564239 NaiveRewardManager (alpha 2, beta 1e-3): lengths 800 wrong, 1200 right,
    2000 right, 3000 wrong -> SOL 1200 -> [-.4, 2.0, 1.2, -1.8]; all wrong 1000, 2000, 3000, 6000 -> SOL = mean 3000
    -> [-2, -1, 0, -3]."""
    cfg = RewardConfig(terms={"shorterbetter": 1.0})
    n = [800, 1200, 2000, 3000, 1000, 2000, 3000, 6000]
    inp = RewardInput(completions=[""] * 8, num_tokens=torch.tensor(n), truncated=torch.zeros(8, dtype=torch.bool),
                      group_ids=torch.tensor([0] * 4 + [1] * 4), meta=[{"answer": "1", "uid": str(i)} for i in range(8)],
                      correct=torch.tensor([False, True, True, False] + [False] * 4))
    assert compute(inp, cfg).total.tolist() == pytest.approx([-0.4, 2.0, 1.2, -1.8, -2.0, -1.0, 0.0, -3.0], abs=1e-5)
