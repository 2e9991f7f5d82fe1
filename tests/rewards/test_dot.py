"""DOT: which groups, the cut T = floor(mean + alpha * std), the margin m, and re-verification of the cut text."""
import math

import pytest
import torch

from rewards import RewardConfig, RewardInput, compute
from rewards.config import DOTConfig
from rewards.dot import cut_lengths
from rewards.types import concat_outputs, select_output

pytestmark = pytest.mark.unit

HEAD, TAIL = "<think>\n", "\n</think>\nAnswer: 2"


def _text(n: int, pad_after_answer: bool = False) -> str:
    """A correct completion of exactly n characters (= n tokens below): thinking padded with 'x' (or, with
    ``pad_after_answer``, the answer first and newlines after it, so a cut can keep the answer)."""
    if pad_after_answer:
        base = HEAD + "1+1=2." + TAIL
        return base + "\n" * (n - len(base))
    return HEAD + "x" * (n - len(HEAD) - len(TAIL)) + TAIL


def _inp(lengths, groups, correct=None, texts=None, truncated=None):
    texts = texts or [_text(n) for n in lengths]
    b = len(texts)
    return RewardInput(completions=texts, num_tokens=torch.tensor(lengths), group_ids=torch.tensor(groups),
                       truncated=torch.tensor(truncated or [False] * b), meta=[{"answer": "2", "uid": "u"}] * b,
                       token_offsets=[list(range(len(t))) for t in texts],
                       correct=None if correct is None else torch.tensor(correct, dtype=torch.bool))


OUTLIER = [100] * 11 + [1000]  # mean 175, sample std sqrt(742500 / 11) = 259.81, T = floor(954.42) = 954


def test_cut_by_hand():
    inp = _inp(OUTLIER, [0] * 12, correct=[True] * 12)
    assert math.floor(175 + 3 * math.sqrt(742500 / 11)) == 954
    assert cut_lengths(inp, RewardConfig()).tolist() == [100] * 11 + [954]
    # 1000 - 954 = 46 < m = 50: kept whole
    assert cut_lengths(inp, RewardConfig(dot=DOTConfig(min_tokens=50))).tolist() == OUTLIER


@pytest.mark.parametrize("correct", [[True] * 11 + [False], [False] * 12, [False] + [True] * 11])
def test_only_all_correct_groups_are_cut(correct):
    inp = _inp(OUTLIER, [0] * 12, correct=correct)
    assert cut_lengths(inp, RewardConfig()).tolist() == OUTLIER


def test_success_threshold_opens_mostly_correct_groups():
    inp = _inp(OUTLIER, [0] * 12, correct=[False] + [True] * 11)  # accuracy 11/12 = .917
    assert cut_lengths(inp, RewardConfig(dot=DOTConfig(success_threshold=0.9))).tolist()[-1] == 954


def test_group_of_one_ties_and_small_groups_are_never_cut():
    # group 0: one row (std 0 -> T = n); group 1: equal lengths (zero spread); group 2: 4 rows, alpha 3 unreachable
    inp = _inp([500, 80, 80, 80, 100, 100, 100, 900], [0, 1, 1, 1, 2, 2, 2, 2], correct=[True] * 8)
    assert cut_lengths(inp, RewardConfig()).tolist() == [500, 80, 80, 80, 100, 100, 100, 900]
    # with alpha 1 the 4-row group's outlier is cut: mean 300, std 400, T = 700, 900 - 700 = 200 >= 32
    assert cut_lengths(inp, RewardConfig(dot=DOTConfig(alpha=1.0))).tolist()[-1] == 700


def test_compute_cuts_reverifies_and_reports_kept_tokens():
    inp = _inp(OUTLIER + [100, 100], [0] * 12 + [1, 1])
    out = compute(inp, RewardConfig(transforms=["dot"]))
    assert out.kept_tokens.tolist() == [100] * 11 + [954, 100, 100]
    assert out.kept_tokens.dtype == torch.long
    # the cut lands inside the thinking: no answer left -> wrong -> reward 0
    assert out.correct.tolist() == [True] * 11 + [False, True, True]
    assert out.total.tolist() == [1.0] * 11 + [0.0, 1.0, 1.0]
    cut = out.input
    assert len(cut.completions[11]) == 954 and cut.completions[11] == inp.completions[11][:954]
    assert len(cut.token_offsets[11]) == 954 and cut.num_tokens[11] == 954
    assert cut.completions[:11] == inp.completions[:11]


def test_cut_that_keeps_the_answer_stays_correct():
    texts = [_text(100)] * 11 + [_text(1000, pad_after_answer=True)]
    out = compute(_inp(OUTLIER, [0] * 12, texts=texts), RewardConfig(transforms=["dot"]))
    assert out.kept_tokens[-1] == 954 and out.correct[-1] and out.total[-1] == 1.0


def test_truncated_flag_is_kept_and_not_penalised_by_the_dot_cut():
    # row 0 hit the rollout cap (and still verified); the outlier's DOT cut keeps its answer: only row 0 is zeroed
    texts = [_text(100)] * 11 + [_text(1000, pad_after_answer=True)]
    inp = _inp(OUTLIER, [0] * 12, texts=texts, truncated=[True] + [False] * 11)
    out = compute(inp, RewardConfig(transforms=["dot"], truncation="zero"))
    assert out.kept_tokens[-1] == 954
    assert out.input.truncated.tolist() == [True] + [False] * 11
    assert out.total.tolist() == [0.0] + [1.0] * 11


def test_no_transform_no_kept_tokens_and_nothing_to_cut_is_identity():
    assert compute(_inp([100, 120], [0, 0]), RewardConfig()).kept_tokens is None
    inp = _inp([100, 120], [0, 0])
    out = compute(inp, RewardConfig(transforms=["dot"]))
    assert out.kept_tokens.tolist() == [100, 120] and out.input.completions == inp.completions


def test_kept_tokens_follow_row_selection_and_concatenation():
    out = compute(_inp(OUTLIER, [0] * 12), RewardConfig(transforms=["dot"]))
    part = select_output(out, torch.tensor([11, 0]))
    assert part.kept_tokens.tolist() == [954, 100] and part.input.num_tokens.tolist() == [954, 100]
    assert concat_outputs([part, part]).kept_tokens.tolist() == [954, 100, 954, 100]


def test_missing_offsets_and_unknown_transform_are_named():
    inp = _inp([100], [0])
    with pytest.raises(ValueError, match="token_offsets"):
        compute(RewardInput(**{**inp.__dict__, "token_offsets": None}), RewardConfig(transforms=["dot"]))
    with pytest.raises(KeyError, match="dott"):
        compute(inp, RewardConfig(transforms=["dott"]))


def test_transform_registry_rejects_duplicates_and_reports_offset_needs():
    from rewards import needs_token_offsets, register_transform

    with pytest.raises(ValueError, match="already registered"):
        register_transform("dot")(lambda inp, cfg: inp)
    assert needs_token_offsets(RewardConfig(transforms=["dot"]))
    assert needs_token_offsets(RewardConfig(terms={"decs": 1.0}))
    assert not needs_token_offsets(RewardConfig())
