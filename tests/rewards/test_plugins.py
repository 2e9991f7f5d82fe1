"""verl and TRL reward functions by import path, as a correctness verifier or as a term, with no wrapper code."""
import textwrap

import pytest
import torch

from rewards import RewardConfig, RewardInput, compute
from rewards.config import CorrectnessConfig
from rewards.plugins import convention, verl_score

pytestmark = pytest.mark.unit

TEXTS = ["<think>x</think> \\boxed{7}", "<think>x</think> \\boxed{8}", "no answer"]


@pytest.fixture
def plugins(tmp_path):
    path = tmp_path / "their_rewards.py"
    path.write_text(textwrap.dedent("""
        seen = {}

        def compute_score(data_source, solution_str, ground_truth, extra_info=None):   # verl
            seen["verl"] = (data_source, sorted(extra_info))
            if "boxed" not in solution_str:
                return {"score": -1.0, "acc": False}
            return 1.0 if solution_str.endswith("{" + ground_truth + "}") else 0.0

        def trl_reward(prompts, completions, answer, **kwargs):                          # TRL
            seen["trl"] = (list(prompts), sorted(kwargs))
            return [None if "boxed" not in c else 0.5 * c.endswith("{" + a + "}") for c, a in zip(completions, answer)]
    """))
    return str(path)


def _inp(extra=None):
    meta = [{"answer": "7", "uid": f"p{i}"} | (extra or {}) for i in range(3)]
    return RewardInput(completions=TEXTS, num_tokens=torch.tensor([9, 9, 3]), truncated=torch.zeros(3, dtype=torch.bool),
                       group_ids=torch.zeros(3, dtype=torch.long), meta=meta)


def test_conventions_are_told_apart_by_parameter_names(plugins):
    from rewards.guard import load_function

    assert convention(load_function(f"{plugins}:compute_score", "x")) == "verl"
    assert convention(load_function(f"{plugins}:trl_reward", "x")) == "trl"
    assert convention(lambda completion, answer: True) == "laconic"
    assert verl_score(True) == 1.0 and verl_score({"score": 0.25, "acc": 1}) == 0.25
    with pytest.raises(ValueError, match="without 'score'"):
        verl_score({"acc": 1})


def test_a_verl_function_as_a_term_and_as_the_verifier(plugins):
    from rewards.registry import user_function

    cfg = RewardConfig(terms={"correctness": 1.0, f"{plugins}:compute_score": 0.5},
                       correctness=CorrectnessConfig(verifier=f"{plugins}:compute_score"))
    out = compute(_inp({"data_source": "gsm8k"}), cfg)
    # term: scores [1, 0, -1] (a dict's "score"); verdicts: score > 0 -> [T, F, F]; total = c + 0.5 * score
    assert out.correct.tolist() == [True, False, False]
    assert torch.allclose(out.terms[f"{plugins}:compute_score"], torch.tensor([1.0, 0.0, -1.0]))
    assert torch.allclose(out.total, torch.tensor([1.5, 0.0, -0.5]))
    seen = user_function(f"{plugins}:compute_score", "x").__globals__["seen"]
    assert seen["verl"] == ("gsm8k", ["answer", "data_source", "uid"])  # the row's meta is extra_info
    compute(_inp(), RewardConfig(terms={f"{plugins}:compute_score": 1.0}))
    assert seen["verl"][0] == "laconic"  # no data_source column: the default


def test_a_trl_function_as_a_term_and_as_the_verifier_with_none_as_zero(plugins):
    cfg = RewardConfig(terms={f"{plugins}:trl_reward": 2.0},
                       correctness=CorrectnessConfig(verifier=f"{plugins}:trl_reward"))
    out = compute(_inp(), cfg)
    # values [0.5, 0.0, None] -> term [0.5, 0, 0]; verdicts value > 0 -> [T, F, F]
    assert out.correct.tolist() == [True, False, False]
    assert torch.allclose(out.total, torch.tensor([1.0, 0.0, 0.0]))
    assert not bool(out.errors.any())
    seen = __import__("rewards.registry", fromlist=["user_function"]).user_function(
        f"{plugins}:trl_reward", "x").__globals__["seen"]
    assert seen["trl"] == (["", "", ""], ["completion_ids", "uid"])  # meta columns (answer by name), no prompt text
