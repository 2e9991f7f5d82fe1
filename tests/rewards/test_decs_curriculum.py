"""DECS curriculum: R_i of the first answer-bearing chunk, the kappa update with its clip, and the add-back draw."""
import math
import random

import pytest
import torch

from rewards import DECSCurriculum, RewardConfig, RewardInput
from rewards.decs_curriculum import all_correct_groups, nrp_ratio, nrp_ratios, select, update

pytestmark = pytest.mark.unit

# thinking chunks: "1+1=2." "2*3=6." "Let me double-check (1)." "1+1=2." "2*3=6." -> answer first in chunk 2 of 5
LONG = "<think>\n1+1=2. 2*3=6.\nLet me double-check (1).\n1+1=2. 2*3=6.\n</think>\nAnswer: 6"
SHORT = "<think>\n1+1=2. 2*3=6.\n</think>\nAnswer: 6"  # chunk 2 of 2
NO_CHUNK = "<think>\nI just know it.\n</think>\nAnswer: 6"


def test_ratio_by_hand_and_missing_cases():
    assert nrp_ratio(LONG, "6") == pytest.approx(2 / 5)
    assert nrp_ratio(SHORT, "6") == 1.0
    assert nrp_ratio(NO_CHUNK, "6") is None
    assert nrp_ratio("<think>\n2*3=6.", "6") is None  # thinking never closed
    assert nrp_ratio("<think>\n</think>\nAnswer: 6", "6") is None  # empty thinking


def _inp(texts, correct, groups):
    b = len(texts)
    return RewardInput(completions=texts, num_tokens=torch.full((b,), 10), truncated=torch.zeros(b, dtype=torch.bool),
                       group_ids=torch.tensor(groups), meta=[{"answer": "6", "uid": str(g)} for g in groups],
                       correct=torch.tensor(correct, dtype=torch.bool))


def test_ratios_over_correct_rows_and_all_correct_groups():
    inp = _inp([LONG, SHORT, LONG, NO_CHUNK, SHORT], [1, 1, 0, 1, 0], [0, 0, 1, 1, 2])
    r = nrp_ratios(inp).tolist()
    assert r[:2] == pytest.approx([0.4, 1.0]) and all(math.isnan(x) for x in r[2:])
    assert all_correct_groups(inp) == [0]


def test_update_by_hand_and_clip():
    assert update(0.1, 0.5, 0.6, 0.3, 0.2) == pytest.approx(0.12)
    assert update(0.1, 0.5, 0.0, 0.3, 0.2) == 0.0  # clipped at 0
    assert update(0.25, 0.2, 0.9, 0.3, 0.2) == 0.3  # clipped at the share of all-correct prompts
    assert update(0.0, 0.5, 0.9, 0.0, 0.2) == 0.0  # no all-correct prompts: nothing can come back


def test_select_counts_and_edges():
    rng = random.Random(0)
    pool = list(range(10))
    assert len(select(pool, 22, 0.12, rng)) == 3  # floor(.12 * 22 / .88) = 3
    assert select(pool, 22, 0.0, rng) == []
    assert select([], 22, 0.5, rng) == []
    assert select([4, 2], 100, 0.5, rng) == [2, 4]  # 100 wanted, 2 available
    assert select(pool, 5, 1.0, rng) == pool  # kappa 1: all of them
    assert select(pool, 0, 0.5, rng) == []  # nothing kept yet: nothing to balance
    picks = select(pool, 9, 0.5, random.Random(7))
    assert picks == select(pool, 9, 0.5, random.Random(7)) and len(set(picks)) == 9


def test_curriculum_step_by_hand():
    cur = DECSCurriculum(RewardConfig())
    assert (cur.kappa, cur.r_prev) == (0.0, 0.5)
    # group 0 all correct (R .4, 1), group 1 mixed (R 1), group 2 all wrong: R_m = 2.4 / 3 = .8, share 1/3
    inp = _inp([LONG, SHORT, SHORT, LONG, LONG, LONG], [1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 2, 2])
    cur.apply([cur.observe(inp)])
    assert cur.kappa == pytest.approx(0.2 * (0.8 - 0.5)) and cur.r_prev == pytest.approx(0.8)
    # R falls back to .4: kappa .06 - .08 -> clipped at 0
    cur.apply([cur.observe(_inp([LONG, LONG], [1, 0], [0, 0]))])
    assert cur.kappa == 0.0 and cur.r_prev == pytest.approx(0.4)


def test_step_without_correct_answers_changes_nothing_and_ranks_reduce():
    cur = DECSCurriculum(RewardConfig())
    cur.apply([cur.observe(_inp([LONG, NO_CHUNK], [0, 1], [0, 0]))])  # no R_i at all
    assert (cur.kappa, cur.r_prev) == (0.0, 0.5)
    cur.apply([])  # empty state of a rank that saw nothing
    a = cur.observe(_inp([SHORT, SHORT], [1, 1], [0, 0]))  # rank 0: R 1, 1; one all-correct group of one
    b = cur.observe(_inp([LONG, LONG], [1, 0], [5, 5]))  # rank 1: R .4; one mixed group
    cur.apply([a, b])
    assert cur.r_prev == pytest.approx(2.4 / 3) and cur.kappa == pytest.approx(0.2 * (0.8 - 0.5))


def test_state_round_trip():
    cur = DECSCurriculum(RewardConfig())
    cur.kappa, cur.r_prev = 0.17, 0.63
    fresh = DECSCurriculum(RewardConfig())
    fresh.load_state_dict(cur.state_dict())
    assert (fresh.kappa, fresh.r_prev) == (0.17, 0.63)


def test_off_by_default():
    assert RewardConfig().decs_curriculum.enabled is False
