"""The goodput controller that decides per batch size whether and how far to speculate (no engine needed)."""
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.controller import SpecController

pytestmark = pytest.mark.unit


def test_choice_follows_the_best_goodput_per_bucket():
    """Goodput at K = (1 + a_1 + ... + a_K) / seconds per request-step at K."""
    c = SpecController(k_max=2, buckets=[1, 4, 64], explore_every=0)
    assert c.choice == {1: 2, 4: 2, 64: 2}  # optimistic start: speculate everywhere
    c.observe([10, 10], [8, 6])  # a = 0.8, 0.6: 1.8 tokens per step at K = 1, 2.4 at K = 2
    assert c.tokens_per_step(0) == 1.0 and c.tokens_per_step(2) == pytest.approx(2.4)
    for jitter in (1.0, 1.1, 0.9):
        c.record(1, 0, 0.010 * jitter, measurable=True)  # batch 1: 100 tokens/s without, 160 with K = 2
        c.record(1, 2, 0.015 * jitter, measurable=True)
        c.record(40, 0, 0.100 * jitter, measurable=True)  # batch 40: 400 tokens/s/request without, 320 with K = 2
        c.record(40, 2, 0.300 * jitter, measurable=True)
    assert c.choice[1] == 2 and c.choice[64] == 0
    assert c.speedups() == {1: pytest.approx(1.6)}
    c.record(40, 2, 1e-6, measurable=False)  # a prefill step or a K change: not a measurement
    assert c.choice[64] == 0 and c.k_for(33) == 0 and c.k_for(1) == 2


def test_choice_follows_acceptance_as_the_drafter_falls_behind():
    """Acceptance is pooled over every speculative step and forgotten at ``decay`` per step: when the drafter stops
    matching the policy, K = 0 wins within tens of steps even though K = 2's step cost has not changed."""
    c = SpecController(k_max=2, buckets=[1], explore_every=0)
    for _ in range(5):
        c.record(1, 0, 0.010, measurable=True)
        c.record(1, 2, 0.015, measurable=True)
    c.observe([1, 1], [1, 1])
    c.record(1, 2, 0.015, measurable=True)
    assert c.choice[1] == 2
    for _ in range(60):
        c.observe([1, 1], [0, 0])  # a = 0 from now on
    c.record(1, 2, 0.015, measurable=True)
    assert c.acceptance()[0] < 0.35 and c.choice[1] == 0


def test_a_near_tie_does_not_flip_the_choice():
    """A K change wastes a step (it verifies the old K's drafts), so the choice moves only for a > 5% better K."""
    c = SpecController(k_max=2, buckets=[1], explore_every=0)
    c.observe([10, 10], [10, 5])  # 2.0 tokens per step at K = 1, 2.5 at K = 2
    for _ in range(3):
        c.record(1, 2, 0.0125, measurable=True)  # K = 2: 200 tokens/s
        c.record(1, 1, 0.0097, measurable=True)  # K = 1: 206 tokens/s, 3% better
    assert c.choice[1] == 2
    for _ in range(4):
        c.record(1, 1, 0.0090, measurable=True)  # K = 1 now: 222 tokens/s (median of its samples), 11% better
    assert c.choice[1] == 1


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


def test_a_bucket_below_a_speculating_one_speculates_so_a_shrinking_batch_never_restarts():
    """Measured per-bucket choices K 2 / 0 / 0 / 4 / 1 at batch 1 / 2 / 4 / 8 / 16 (SmolLM2): run as chosen, a batch of
    16 shrinking to 1 speculates, stops at 4, restarts at 1 after a hand-over of everything running. What runs
    instead: 2 / 4 / 4 / 4 / 1, so the lookup goes from K > 0 to 0 at most once, at the large end."""
    c = SpecController(k_max=4, buckets=[1, 2, 4, 8, 16, 32, 64], explore_every=0)
    for b in (1, 2, 4, 8, 16, 32):  # measured buckets; 64 never ran and keeps the optimistic K = 4
        c.samples[(b, 0)] = [0.01, 0.01]
    c.choice.update({1: 2, 2: 0, 4: 0, 8: 4, 16: 1, 32: 0})
    assert [c.effective(b) for b in c.buckets] == [2, 4, 4, 4, 1, 0, 4]  # an unmeasured 64 lends 32 nothing
    lookup = c.lookup(40)
    assert lookup[1:5] == [2, 4, 4, 4] and lookup[16] == 1 and lookup[17:33] == [0] * 16 and lookup[33] == 4
    assert all(a > 0 for a in lookup[1:17])  # from 16 down to 1 it never stops speculating
    assert c.k_for(3) == 4 and c.k_for(20) == 0
    assert c.handoff_size(33) == 16  # a body at K = 0 (sizes 17..32) hands over when 16 are left
    c.choice[16] = 0
    assert c.handoff_size(33) == 8 and [c.effective(b) for b in c.buckets][:6] == [2, 4, 4, 4, 0, 0]


def test_exploration_measures_every_k_and_state_round_trips():
    """Each exploration lasts two steps, so the second is measurable (its K equals the previous step's): a K that is
    faster than the current choice gets measured and chosen."""
    c = SpecController(k_max=2, buckets=[4], explore_every=3)
    c.observe([4, 4], [2, 2])  # a = 0.5, 0.5
    prev = None
    for _ in range(40):
        k = c.k_for(3)
        c.record(3, k, {0: 1.0, 1: 2.0, 2: 3.0}[k], measurable=k == prev)  # K = 0 is the fastest here
        prev = k
    assert {k for (_, k) in c.samples} == {0, 1, 2} and c.choice[4] == 0
    d = SpecController(k_max=2, buckets=[4], explore_every=3)
    d.load_state_dict(c.state_dict())
    assert d.state_dict() == c.state_dict() and d.choice == c.choice and d.acceptance() == [0.5, 0.5]
    old = {"samples": {"4,2": [100.0, 90.0]}, "steps": {"4": 7}, "choice": {"4": 1}}  # the tokens/s controller's
    e = SpecController(k_max=2, buckets=[4], explore_every=3)
    e.load_state_dict(old)
    assert e.choice == {4: 1} and e.samples == {} and e.acceptance() == [0.0, 0.0]


def test_k_max_must_be_positive_and_exploration_last_two_steps():
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpecController(k_max=0, buckets=[1], explore_every=0)
    with pytest.raises(ValueError, match="spec_explore_every=2"):
        SpecController(k_max=2, buckets=[1], explore_every=2)


def test_step_costs_pool_every_k_so_a_lucky_sample_does_not_win():
    """K >= 1 step costs lie on a line fitted to all K's medians (weighted by samples): two lucky samples of K = 2
    (2 ms against ~3-4 ms) would win by their own median (2.7 / 2.0 vs 4.0 / 4.0 tokens per ms) but not on the line."""
    c = SpecController(k_max=4, buckets=[4], explore_every=0)
    c.observe([10, 10, 10, 10], [9, 8, 7, 6])  # 1.9 / 2.7 / 3.4 / 4.0 tokens per step at K = 1..4
    for _ in range(16):
        c.record(4, 4, 4 * 0.004, measurable=True)
    for k, ms in ((1, 3.0), (2, 2.0), (3, 3.8)):
        for _ in range(2):
            c.record(4, k, 4 * ms / 1000, measurable=True)
    cost = c.step_costs(4)
    assert cost[1] < cost[2] < cost[3] < cost[4] == pytest.approx(0.004, rel=0.01)
    assert c.choice[4] == 4
    d = SpecController(k_max=4, buckets=[4], explore_every=0)  # the same costs, decreasing with K: slope clamped to 0
    for k in (1, 2, 3, 4):
        for _ in range(2):
            d.record(4, k, 4 * (5 - k) / 1000, measurable=True)
    assert len(set(round(v, 9) for v in d.step_costs(4).values())) == 1


def test_exploration_slows_down_once_every_k_is_measured():
    """Off-choice steps are what exploration costs: one step in 4 with explore_every=8 while a bucket learns (every K
    needs 4 measurements), one in 32 once it is settled."""
    c = SpecController(k_max=2, buckets=[4], explore_every=8)
    c.observe([4, 4], [4, 4])  # full acceptance: K = 2 stays the choice
    prev, off, steps = None, [], 0
    while not c.settled(4):
        k = c.k_for(4)
        c.record(4, k, 1.0 + 0.1 * k, measurable=k == prev)
        prev, steps = k, steps + 1
        assert steps < 200, "a bucket explored every 8th step must settle"
    assert 0 < steps < 200 and c.choice[4] == 2
    for _ in range(640):
        k = c.k_for(4)
        off.append(k != c.choice[4])
        c.record(4, k, 1.0 + 0.1 * k, measurable=k == prev)
        prev = k
    assert sum(off) / len(off) <= 2 / 64 + 1e-9 and sum(off) > 0  # 2 steps of 64, two thirds of them another K
    assert not SpecController(k_max=2, buckets=[4], explore_every=8).settled(3)


def test_paused_controller_uses_its_choices_and_learns_nothing():
    """While paused (the engine serves evaluation traffic) the controller answers with its chosen K, never explores,
    and neither acceptance counts nor step timings change it; unpaused, the same traffic would."""
    c = SpecController(k_max=2, buckets=[1, 4], explore_every=4)
    for _ in range(8):
        c.observe([1, 1], [1, 1])
        for k in (0, 1, 2):
            c.record(1, k, 0.010 + 0.002 * k, measurable=True)
    before = c.state_dict()
    chosen = c.choice[1]
    c.paused = True
    ks = []
    for _ in range(12):  # unpaused, steps 2 and 3 of every 4 would explore
        ks.append(c.k_for(1))
        c.observe([1, 1], [0, 0])  # a drafter that never matches: would drive the choice to K = 0
        c.record(1, ks[-1], 0.050, measurable=True)
    assert ks == [chosen] * 12 and not c.exploring(1)
    assert c.state_dict() == before
    c.paused = False
    for _ in range(40):
        c.observe([1, 1], [0, 0])
    c.record(1, chosen, 0.050, measurable=True)
    assert c.state_dict() != before and c.choice[1] == 0


ROOT = Path(__file__).resolve().parents[2]
NO_VLLM = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'vllm':
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
from rollout.controller import SpecController
c = SpecController(k_max=2, buckets=[1, 8], explore_every=0)
c.observe([4, 4], [3, 2])
c.record(1, 2, 0.01, measurable=True)
print('OK', c.k_for(1), 'vllm' in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] == 'rollout'))
"""


def test_controller_module_imports_and_runs_without_vllm():
    """The decision rule is pure: importing and running it pulls in no vLLM and none of the vLLM glue."""
    p = subprocess.run([sys.executable, "-c", NO_VLLM], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.stdout.startswith("OK 2 False"), p.stderr[-3000:]
    assert "rollout.vllm" not in p.stdout, p.stdout  # neither vllm_engine nor vllm_patches was imported


def _sources(**kw):
    from rollout.controller import DraftSources

    return DraftSources(**({"k_max": 4, "n_max": 4, "explore": 4, "explore_every": 5} | kw))


def test_draft_sources_expected_tokens_are_one_plus_the_per_position_acceptance():
    """A 4-token draft accepted through 2 tokens, then one accepted through 4: per position drafted 2 / 2 / 2 / 2,
    accepted 2 / 2 / 1 / 1 (no decay) -> 1 + 1 + 1 + 0.5 + 0.5 = 4.0 tokens at K = 4, 3.0 at K = 2."""
    s = _sources(decay=1.0)
    s.record("lookup", 3, 4, 2)
    s.record("lookup", 3, 4, 4)
    assert s.expected("lookup", 3, 4) == pytest.approx(4.0) and s.expected("lookup", 3, 2) == pytest.approx(3.0)
    assert s.expected("head", 3, 4) == 1.0 and s.expected("lookup", 2, 4) == 1.0  # nothing measured: the bonus only
    s.record("head", 0, 2, 5)  # accepted beyond the draft's length counts as the whole draft
    assert s.expected("head", 0, 4) == pytest.approx(3.0)


def test_draft_sources_explore_both_then_pick_the_better_per_match_length():
    """Until both sources have `explore` drafts at a match length the one with fewer is drafted; then the better one,
    judged at that match length only (the head wins where it is better, the lookup elsewhere), with every
    `explore_every`-th rejected comparison going to the loser."""
    s = _sources()
    first = [s.pick(4, 4) for _ in range(8)]
    assert first == ["lookup", "head"] * 4
    for n, lookup_acc, head_acc in ((4, 4, 1), (2, 0, 3)):
        for _ in range(20):
            s.record("lookup", n, 4, lookup_acc)
            s.record("head", n, 4, head_acc)
    picks4 = [s.pick(4, 4) for _ in range(10)]
    assert picks4.count("lookup") == 8 and picks4.count("head") == 2  # 2 of 10 explorations (every 5th rejected)
    picks2 = [s.pick(2, 4) for _ in range(10)]
    assert picks2.count("head") == 8
    assert s.picked["lookup"] == 4 + 8 + 2 and s.lookup_share() == pytest.approx(14 / 28)


def test_draft_sources_forget_and_checkpoint():
    """Counts decay per record (a source that got worse is re-judged), the state round-trips exactly through the
    controller's state_dict, and a state of another K is refused by name."""
    s = _sources(decay=0.5, explore=1, explore_every=0)
    for _ in range(10):
        s.record("lookup", 4, 4, 4)
        s.record("head", 4, 4, 2)
    assert s.pick(4, 4) == "lookup"
    for _ in range(10):
        s.record("lookup", 4, 4, 0)
    assert s.expected("lookup", 4, 4) < 1.01 and s.pick(4, 4) == "head"
    c = SpecController(k_max=4, buckets=[1, 4], explore_every=0)
    c.sources = s
    c2 = SpecController(k_max=4, buckets=[1, 4], explore_every=0)
    c2.sources = _sources(decay=0.5)
    c2.load_state_dict(c.state_dict())
    assert c2.sources.state_dict() == s.state_dict()
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        _sources(k_max=2).load_state_dict(s.state_dict())
