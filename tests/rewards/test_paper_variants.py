"""L1 Exact/Max per row, HAPO linear, DLER's filter score and keep rule, the public reward-history API: expected
numbers derived by hand from each paper's released code."""
import json
import math

import pytest
import torch

from rewards import RewardConfig, RewardInput, apply, compute, history, make_states, observe
from rewards.config import HAPOConfig, LCPOMaxConfig, validate

pytestmark = pytest.mark.unit


def _inp(n, correct, meta=None, group_ids=None, truncated=None):
    b = len(n)
    return RewardInput(completions=[""] * b, num_tokens=torch.tensor(n), truncated=torch.tensor(truncated or [False] * b),
                       group_ids=torch.tensor(group_ids or list(range(b))),
                       meta=meta or [{"answer": "1", "uid": f"p{i}"} for i in range(b)],
                       correct=torch.tensor(correct))


# ----------------------------------------------------------------------------------------------------- L1
def test_lcpo_mixes_exact_and_max_rows_as_l1s_math_reward_fn():
    """cmu-l3/l1 @c3b546e6 math_reward_fn: each row by its instruction (or the sign of its signed target)."""
    meta = [{"answer": "1", "uid": "a", "target_tokens": 1000, "target_mode": "exact"},
            {"answer": "1", "uid": "b", "target_tokens": 1000, "target_mode": "max"},
            {"answer": "1", "uid": "c", "target_tokens": -1000},  # L1's signed num_tokens: Max with |N|
            {"answer": "1", "uid": "d", "target_tokens": 2000},   # signed, positive: Exact
            {"answer": "1", "uid": "e"}]                          # no target: plain correctness
    cfg = RewardConfig(terms={"lcpo": 1.0})
    out = compute(_inp([1200, 800, 1500, 500, 10], [True, True, True, False, True], meta), cfg)
    # exact: 1 - 3e-4 * 200 = .94; max: clip(1e-3 * 200 + .5) = .7; max: clip(-.5 + .5) = 0;
    # exact, wrong: 0 - 3e-4 * 1500 = -.45; no target: 1
    assert out.total.tolist() == pytest.approx([0.94, 0.7, 0.0, -0.45, 1.0], abs=1e-6)


def test_lcpo_max_additive_is_l1s_released_combination():
    """L1's code with multiplier_reward=false adds the Max delta: alpha_L1 = 3e-4 -> lcpo_max alpha 1.5e-4; N=1000,
    n=800 correct -> 1 + (clip(.06, -1, 1) + 1) / 2 = 1.53; n=5000 wrong -> 0 + 0 = 0."""
    cfg = RewardConfig(terms={"lcpo_max": 1.0}, lcpo_max=LCPOMaxConfig(alpha=1.5e-4, delta=0.5, combine="add"))
    meta = [{"answer": "1", "uid": u, "target_tokens": 1000} for u in "ab"]
    out = compute(_inp([800, 5000], [True, False], meta), cfg)
    assert out.total.tolist() == pytest.approx([1.53, 0.0], abs=1e-6)


def test_both_mode_needs_the_per_row_term():
    from recipes.loader import load
    from trainers.config import validate as validate_all

    cfg, _ = load("tiny_lcpo", ["data.length_target.mode=both"])
    with pytest.raises(ValueError, match="use reward.terms lcpo"):
        validate_all(cfg)
    cfg, _ = load("tiny_lcpo", ["data.length_target.mode=both", "reward.terms={lcpo: 1.0}"])
    validate_all(cfg)


def test_both_mode_draws_exact_or_max_per_problem_and_states_it():
    from recipes.tasks.data import with_length_targets
    from trainers.config import LengthTargetConfig

    rows = [{"uid": f"u{i}", "prompt": "Add 1.", "answer": "2"} for i in range(200)]
    out = with_length_targets(rows, LengthTargetConfig(mode="both", min_tokens=100, max_tokens=400), 0, [None] * 200)
    modes = [r["target_mode"] for r in out]
    assert 70 < modes.count("max") < 130
    for r in out:
        line = r["prompt"].rstrip("\n").rsplit("\n", 1)[1]
        assert line == (f"Think for maximum {r['target_tokens']} tokens." if r["target_mode"] == "max"
                        else f"Think for {r['target_tokens']} tokens.")
    exact = with_length_targets(rows[:5], LengthTargetConfig(mode="exact", min_tokens=100, max_tokens=400), 0, [None] * 5)
    assert [r["target_tokens"] for r in exact] == [r["target_tokens"] for r in out[:5]]  # same draws as before


# ----------------------------------------------------------------------------------------------------- HAPO
def _hapo(shape, n, correct, seeded):
    cfg = RewardConfig(terms={"hapo": 1.0}, hapo=HAPOConfig(shape=shape))
    states = make_states(cfg)
    if seeded:
        states["hapo"].seed({f"p{i}": 100 for i in range(len(n))})
    return compute(_inp(n, correct), cfg, states).terms["hapo"].tolist()


def test_hapo_linear_with_history_by_hand():
    """HCY123902/HAPO @c91ae3b6 utils.compute_len_reward_linear, h = 100, tolerance .1."""
    got = _hapo("linear", [50, 105, 110, 150, 200, 50, 150, 300], [True] * 5 + [False] * 3, seeded=True)
    assert got == pytest.approx([0.5, 0.0, 0.0, -0.4, -0.7, 0.0, -0.4, -1.0], abs=1e-6)


def test_hapo_linear_and_cosine_without_history_are_zero():
    assert _hapo("linear", [50, 300], [True, False], seeded=False) == [0.0, 0.0]
    assert _hapo("cosine", [50, 300], [True, False], seeded=False) == [0.0, 0.0]


def test_hapo_cosine_with_seeded_history_by_hand():
    """utils.compute_len_reward, h = 100: correct 50 -> .7071; correct 150 -> max(-.7071, -.7); wrong 150 -> -.7071;
    wrong 50 -> 0; correct 250 (>= 2h) -> -.7."""
    got = _hapo("cosine", [50, 150, 150, 50, 250], [True, True, False, False, True], seeded=True)
    assert got == pytest.approx([math.cos(math.pi / 4), -0.7, -math.cos(math.pi / 4), 0.0, -0.7], abs=1e-6)


def test_reward_history_reads_and_seeds_through_the_public_api(tmp_path):
    cfg = RewardConfig(terms={"correctness": 1.0, "hapo": 1.0, "ceeh": 1.0})
    states = make_states(cfg)
    inp = compute(_inp([120, 80], [True, True], [{"answer": "1", "uid": "q"}] * 2, group_ids=[0, 0]), cfg, states).input
    apply(states, [observe(inp, states)])
    h = history(states)
    assert h == {"hapo": {"q": 80.0}, "ceeh": {"q": {"acc": 1.0, "opt_len": 80.0}}}
    path = tmp_path / "reward_history.json"
    path.write_text(json.dumps(h))
    seeded = make_states(RewardConfig(terms=cfg.terms, history_file=str(path)))
    assert history(seeded) == h


@pytest.mark.parametrize("content, needle", [
    ("{not json", "JSONDecodeError"),
    ('{"kimi": {}}', "must map stateful terms"),
    ('{"hapo": {"q": -3}}', "must be a length > 0"),
])
def test_a_bad_history_file_fails_validation_naming_the_field(tmp_path, content, needle):
    path = tmp_path / "h.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=needle) as e:
        validate(RewardConfig(terms={"correctness": 1.0, "hapo": 1.0}, history_file=str(path)))
    assert "history" in str(e.value)


def test_a_missing_history_file_is_named():
    with pytest.raises(ValueError, match="reward.history_file='/nope.json'"):
        validate(RewardConfig(terms={"hapo": 1.0}, history_file="/nope.json"))


# ----------------------------------------------------------------------------------------------------- DLER
def test_dler_filters_on_the_score_before_the_truncation_penalty_and_keeps_groups_of_one():
    """NVlabs/DLER @498b8ed6: reward = score x 0.1 when truncated; dynamic sampling on seq_reward (the score);
    a group whose only difference is truncation (scores 1, 1; rewards 1, .1) has no signal; a group of one is kept."""
    from trainers.sampling import has_signal

    cfg = RewardConfig(terms={"correctness": 1.0}, truncation="scale", truncation_scale=0.1)
    out = compute(_inp([50, 4000], [True, True], truncated=[False, True], group_ids=[0, 0]), cfg)
    assert out.total.tolist() == pytest.approx([1.0, 0.1]) and out.score.tolist() == [1.0, 1.0]
    assert has_signal(out.total) and not has_signal(out.score)
    assert has_signal(torch.tensor([0.0])) and has_signal(torch.tensor([1.0, 0.0])) and not has_signal(torch.ones(3))
