"""Verifier format gates and the correctness term."""
import pytest
import torch

from rewards import RewardConfig, RewardInput, compute
from rewards.verifiers import exact_integer, extract_answer

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text,answer", [
    ("<think>\n1+1=2.\n</think>\nAnswer: 2", "2"),
    ("<think>\nx\n</think>\nAnswer: -7", "-7"),
    ("<think>\nx\n</think>\nAnswer: 007", "7"),
])
def test_correct(text, answer):
    assert exact_integer(text, answer)


@pytest.mark.parametrize("text", [
    "<think>\n1+1=2.\nAnswer: 2",                 # thinking never closed
    "<think>\n1+1=2.\n</think>\nThe answer is 2",  # no answer line
    "<think>\n</think>\nAnswer: 3",                # wrong value
    "<think>\n</think>\nAnswer: 2 and more",       # trailing text after the answer
    "",
])
def test_incorrect(text):
    assert not exact_integer(text, "2")


def test_answer_inside_thinking_is_not_the_final_answer():
    assert extract_answer("<think>\nAnswer: 5\n</think>\nAnswer: 6") == "6"


def _inp(texts, answers):
    b = len(texts)
    return RewardInput(completions=texts, num_tokens=torch.full((b,), 10), truncated=torch.zeros(b, dtype=torch.bool),
                       group_ids=torch.zeros(b, dtype=torch.long), meta=[{"answer": a, "uid": str(i)} for i, a in enumerate(answers)])


def test_compute_weights_terms_and_reports_verdicts():
    cfg = RewardConfig(terms={"correctness": 2.0})
    out = compute(_inp(["<think>\n</think>\nAnswer: 4", "<think>\n</think>\nAnswer: 5"], ["4", "4"]), cfg)
    assert out.total.tolist() == [2.0, 0.0]
    assert out.correct.tolist() == [True, False]
    assert out.terms["correctness"].tolist() == [1.0, 0.0]


def test_unknown_term_is_named():
    with pytest.raises(KeyError, match="lcpo_typo"):
        compute(_inp(["x"], ["1"]), RewardConfig(terms={"lcpo_typo": 1.0}))


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="num_tokens"):
        RewardInput(completions=["a", "b"], num_tokens=torch.zeros(3), truncated=torch.zeros(2, dtype=torch.bool),
                    group_ids=torch.zeros(2, dtype=torch.long), meta=[{}, {}])
