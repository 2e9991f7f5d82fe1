"""CEEH: the gated, clipped length term by hand, the asymmetric EMAs of Acc_h and L*, ranks, and checkpoints."""
import pytest
import torch

from rewards import RewardConfig, RewardInput, apply, compute, make_states, observe
from rewards.ceeh import ema

pytestmark = pytest.mark.unit


def _inp(n, correct, groups=None, uids=None, truncated=None):
    b = len(n)
    groups = groups or [0] * b
    uids = uids or [f"u{g}" for g in groups]
    return RewardInput(completions=[""] * b, num_tokens=torch.tensor(n), group_ids=torch.tensor(groups),
                       truncated=torch.tensor(truncated or [False] * b),
                       meta=[{"answer": "0", "uid": u} for u in uids], correct=torch.tensor(correct, dtype=torch.bool))


def _setup(acc=None, opt_len=None, **cfg_kw):
    cfg = RewardConfig(terms={"ceeh": 1.0}, **cfg_kw)
    states = make_states(cfg)
    states["ceeh"].acc, states["ceeh"].opt_len = dict(acc or {}), dict(opt_len or {})
    return cfg, states


def test_term_by_hand_with_clip_and_wrong_rows():
    cfg, st = _setup({"u0": 0.5}, {"u0": 100.0})
    # group accuracy 6/8 = .75 >= Acc_h .5: the gate is open
    inp = _inp([50, 100, 300, 2000, 1100, 80, 40, 90], [1, 1, 1, 1, 1, 1, 0, 0])
    got = compute(inp, cfg, st).terms["ceeh"].tolist()
    # .1 * (100 - n) / 100, floored at -.9; wrong -> 0
    assert got == pytest.approx([0.05, 0.0, -0.2, -0.9, -0.9, 0.02, 0.0, 0.0])


def test_gate_closed_below_history_open_at_a_tie():
    cfg, st = _setup({"u0": 0.5, "u1": 0.5}, {"u0": 100.0, "u1": 100.0})
    inp = _inp([50, 60, 70, 80, 50, 60], [1, 0, 0, 0, 1, 0], groups=[0, 0, 0, 0, 1, 1])
    got = compute(inp, cfg, st).terms["ceeh"].tolist()
    assert got == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.05, 0.0])  # group 0: .25 < .5 closed; group 1: .5 = .5 open


def test_empty_state_gives_zero_then_first_visit_sets_history():
    cfg, st = _setup()
    out = compute(_inp([120, 100, 300, 90], [1, 1, 0, 0]), cfg, st)
    assert out.terms["ceeh"].tolist() == [0.0] * 4  # no L* yet
    apply(st, [observe(out.input, st)])
    assert st["ceeh"].acc == {"u0": 0.5} and st["ceeh"].opt_len == {"u0": 100.0}


def test_all_incorrect_group_sets_accuracy_but_no_optimal_length():
    cfg, st = _setup()
    out = compute(_inp([50, 60], [0, 0]), cfg, st)
    apply(st, [observe(out.input, st)])
    assert st["ceeh"].acc == {"u0": 0.0} and st["ceeh"].opt_len == {}
    assert compute(_inp([50], [1]), cfg, st).terms["ceeh"].tolist() == [0.0]  # correct now, but no L* to compare


def test_asymmetric_emas_by_hand():
    cfg, st = _setup({"u0": 0.5}, {"u0": 100.0})
    apply(st, [observe(_inp([50, 100, 300, 80], [1, 1, 1, 0]), st)])
    assert st["ceeh"].acc["u0"] == pytest.approx(0.8 * 0.5 + 0.2 * 0.75)  # up: fast
    assert st["ceeh"].opt_len["u0"] == pytest.approx(0.8 * 100 + 0.2 * 50)  # shorter: fast
    cfg, st = _setup({"u0": 0.5}, {"u0": 100.0})
    apply(st, [{"ceeh": st["ceeh"].observe(_inp([200, 250, 300, 80], [1, 0, 0, 0]))}])
    assert st["ceeh"].acc["u0"] == pytest.approx(0.95 * 0.5 + 0.05 * 0.25)  # down: slow
    assert st["ceeh"].opt_len["u0"] == pytest.approx(0.95 * 100 + 0.05 * 200)  # longer: slow
    assert ema(0.5, 0.5, 0.2, 0.05, True) == 0.5 and ema(None, 7.0, 0.2, 0.05, False) == 7.0


def test_batch_reads_state_from_before_the_batch_and_groups_of_one():
    cfg, st = _setup({"u0": 1.0}, {"u0": 100.0})
    out = compute(_inp([50], [1]), cfg, st)  # group of one, accuracy 1 >= 1
    assert out.terms["ceeh"].tolist() == pytest.approx([0.05])
    apply(st, [observe(out.input, st)])
    assert st["ceeh"].opt_len["u0"] == pytest.approx(90.0)


def test_ranks_reduce_counts_and_shortest_length():
    cfg, st = _setup()
    r0 = observe(_inp([90, 70], [1, 0]), st)
    r1 = observe(_inp([60, 80], [1, 1]), st)
    apply(st, [r0, r1])
    assert st["ceeh"].acc == {"u0": pytest.approx(3 / 4)} and st["ceeh"].opt_len == {"u0": 60.0}


def test_state_round_trip_and_hard_set():
    cfg, st = _setup({"a": 0.2, "b": 0.9, "c": 0.7}, {"a": 10.0})
    fresh = make_states(cfg)
    fresh["ceeh"].load_state_dict(st["ceeh"].state_dict())
    assert fresh["ceeh"].acc == st["ceeh"].acc and fresh["ceeh"].opt_len == {"a": 10.0}
    # eq. 10: below the mean Acc_h (.6); unseen problems are not hard
    assert st["ceeh"].hard(["a", "b", "c", "new"]).tolist() == [True, False, False, False]
    assert make_states(cfg)["ceeh"].hard(["a"]).tolist() == [False]


def test_on_top_of_correctness_and_truncation():
    cfg = RewardConfig(terms={"correctness": 1.0, "ceeh": 1.0}, truncation="zero")
    st = make_states(cfg)
    st["ceeh"].acc, st["ceeh"].opt_len = {"u0": 0.0}, {"u0": 100.0}
    out = compute(_inp([50, 300, 400, 70], [1, 1, 1, 0], truncated=[False, False, True, False]), cfg, st)
    assert out.total.tolist() == pytest.approx([1.05, 0.8, 0.0, 0.0])
