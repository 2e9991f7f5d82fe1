"""The ``math`` verifier: math_verify on the text after the last </think>, with its own timeouts."""
import pytest
import torch

from rewards import RewardConfig, RewardInput, compute
from rewards.config import CorrectnessConfig
from rewards.verifiers import VERIFIERS, math_equivalent

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("completion,answer", [
    ("<think>\nhalf of one\n</think>\nThe answer is \\boxed{\\frac{1}{2}}", "0.5"),
    ("<think>\n</think>\n\\boxed{0.5}", "\\frac{1}{2}"),
    ("<think>\n</think>\nSo $x = \\boxed{2\\sqrt{2}}$", "\\sqrt{8}"),
    ("<think>\n</think>\n\\boxed{x^2+2x+1}", "(x+1)^2"),
    ("<think>\n</think>\n\\boxed{\\dfrac{\\pi}{2}}", "\\frac{\\pi}{2}"),
    ("<think>\n</think>\n\\boxed{(1,2)}", "(1, 2)"),
    ("Final: \\boxed{7}", "7.0"),  # no thinking section: the whole completion is read
    ("<think>\n</think>\n\\boxed{36}", 36),  # a non-string reference
])
def test_equivalent(completion, answer):
    assert math_equivalent(completion, answer)


@pytest.mark.parametrize("completion,answer", [
    ("<think>\n</think>\n\\boxed{\\frac{1}{3}}", "0.5"),
    ("<think>\nthe answer is \\boxed{2}\n</think>\nI am not sure.", "2"),  # answer only inside the thinking
    ("<think>\n\\boxed{3}\n</think>\n\\boxed{4}", "3"),  # the final answer, not the thinking, counts
    ("<think>\n</think>\n", "3"),
    ("", "3"),
    ("<think>\n</think>\n\\boxed{3}", ""),
])
def test_not_equivalent(completion, answer):
    assert not math_equivalent(completion, answer)


def test_uses_math_verify_timeouts(monkeypatch):
    import math_verify

    seen = {}

    def parse(text, parsing_timeout):
        seen.setdefault("parse", []).append(parsing_timeout)
        return ["x"]

    def verify(gold, pred, timeout_seconds):
        seen["verify"] = timeout_seconds
        return True

    monkeypatch.setattr(math_verify, "parse", parse)
    monkeypatch.setattr(math_verify, "verify", verify)
    assert math_equivalent("\\boxed{1}", "1", timeout_s=2)
    assert seen == {"parse": [2, 2], "verify": 2}


def test_registered_and_used_by_compute():
    assert VERIFIERS["math"] is math_equivalent
    texts = ["<think>\n</think>\n\\boxed{\\frac{1}{2}}", "<think>\n</think>\n\\boxed{0.4}"]
    inp = RewardInput(completions=texts, num_tokens=torch.tensor([5, 5]), truncated=torch.zeros(2, dtype=torch.bool),
                      group_ids=torch.zeros(2, dtype=torch.long), meta=[{"answer": "0.5", "uid": "a"}] * 2)
    out = compute(inp, RewardConfig(correctness=CorrectnessConfig(verifier="math")))
    assert out.correct.tolist() == [True, False]
