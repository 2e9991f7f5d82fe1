"""The goodput controller that decides per batch size whether and how far to speculate (no engine needed)."""
import pytest

from rollout.speculative import SpecController


def test_choice_follows_the_best_median_goodput_per_bucket():
    c = SpecController(k_max=2, buckets=[1, 4, 64], explore_every=0)
    assert c.choice == {1: 2, 4: 2, 64: 2}  # optimistic start: speculate everywhere
    for tok_s_k0, tok_s_k2 in ((100.0, 180.0), (110.0, 170.0), (90.0, 175.0)):
        c.record(1, 0, int(tok_s_k0), 1.0, measurable=True)
        c.record(1, 2, int(tok_s_k2), 1.0, measurable=True)
        c.record(40, 0, int(10 * tok_s_k0), 1.0, measurable=True)
        c.record(40, 2, int(4 * tok_s_k2), 1.0, measurable=True)
    assert c.choice[1] == 2 and c.choice[64] == 0
    c.record(40, 2, 10**6, 1.0, measurable=False)  # a prefill step or a K change: not a measurement
    assert c.choice[64] == 0 and c.k_for(33) == 0 and c.k_for(1) == 2


def test_handoff_size_is_the_largest_batch_that_speculates():
    c = SpecController(k_max=4, buckets=[1, 2, 4, 8, 16], explore_every=0)
    c.choice.update({8: 0, 16: 0})
    assert c.handoff_size(64) == 4  # 5..8 fall in bucket 8 (no speculation), 3..4 in bucket 4
    c.choice[4] = 0
    assert c.handoff_size(64) == 2
    c.choice.update({1: 0, 2: 0})
    assert c.handoff_size(64) == 0
    c.choice[1] = 3
    c.forced_off = True
    assert c.handoff_size(64) == 0 and c.k_for(1) == 0


def test_exploration_measures_every_k_and_state_round_trips():
    """Each exploration lasts two steps, so the second is measurable (its K equals the previous step's): a K that is
    faster than the current choice gets measured and chosen."""
    c = SpecController(k_max=2, buckets=[4], explore_every=3)
    prev = None
    for _ in range(40):
        k = c.k_for(3)
        c.record(3, k, {0: 30, 1: 20, 2: 10}[k], 1.0, measurable=k == prev)  # K = 0 is the fastest here
        prev = k
    assert {k for (_, k) in c.samples} == {0, 1, 2} and c.choice[4] == 0
    d = SpecController(k_max=2, buckets=[4], explore_every=3)
    d.load_state_dict(c.state_dict())
    assert d.state_dict() == c.state_dict() and d.choice == c.choice


def test_k_max_must_be_positive_and_exploration_last_two_steps():
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpecController(k_max=0, buckets=[1], explore_every=0)
    with pytest.raises(ValueError, match="spec_explore_every=2"):
        SpecController(k_max=2, buckets=[1], explore_every=2)
