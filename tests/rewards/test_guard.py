"""User reward code that raises or hangs scores 0 and is counted; bad names fail at config time, naming the field."""
import textwrap

import pytest
import torch

from rewards import RewardConfig, RewardInput, compute
from rewards.guard import load_function
from rewards.registry import check_names, resolve_verifier, verify_texts

pytestmark = pytest.mark.unit

GOOD = "<think>\n1+1=2.\n</think>\nAnswer: 2"


def _user_file(tmp_path, body: str) -> str:
    path = tmp_path / "user_reward.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def user_fns(tmp_path):
    return _user_file(tmp_path, """
        import time
        import torch

        def flaky(completion, answer):
            if answer == "3":
                raise RuntimeError("judge unreachable")
            if answer == "4":
                time.sleep(60)  # hangs
            return completion.endswith("Answer: " + answer)

        def nan_term(inp, cfg):
            return torch.full((len(inp.completions),), float("nan"))

        def broken_term(inp, cfg):
            raise ZeroDivisionError("oops")

        def wrong_shape(inp, cfg):
            return torch.zeros(len(inp.completions) + 1)
    """)


def _inp(answers):
    n = len(answers)
    return RewardInput(completions=[GOOD] * n, num_tokens=torch.full((n,), 10), truncated=torch.zeros(n, dtype=torch.bool),
                       group_ids=torch.zeros(n, dtype=torch.long), meta=[{"answer": a, "uid": f"p{i}"}
                                                                        for i, a in enumerate(answers)])


def test_raising_and_hanging_verifier_calls_score_zero_and_are_counted(user_fns, capsys):
    ok, err = verify_texts([GOOD] * 4, ["2", "3", "4", "5"], f"{user_fns}:flaky", timeout_s=0.5)
    assert ok.tolist() == [True, False, False, False]
    assert err.tolist() == [False, True, True, False]
    msg = capsys.readouterr().err
    assert "raised RuntimeError: judge unreachable on row 1" in msg and "timed out after 0.5 s" in msg

    cfg = RewardConfig(terms={"correctness": 1.0, "kimi": 0.5}, timeout_s=0.5)
    cfg.correctness.verifier = f"{user_fns}:flaky"
    out = compute(_inp(["2", "3", "4", "2"]), cfg)
    assert out.errors.tolist() == [False, True, True, False]
    assert out.total[1] == 0 and out.total[2] == 0 and out.total[0] > 0


def test_user_term_by_path_weighted_and_failures_zeroed(user_fns):
    cfg = RewardConfig(terms={"correctness": 1.0, f"{user_fns}:broken_term": 2.0}, timeout_s=1.0)
    out = compute(_inp(["2", "2"]), cfg)
    assert out.errors.all() and (out.total == 0).all()
    cfg = RewardConfig(terms={"correctness": 1.0, f"{user_fns}:wrong_shape": 1.0})
    assert compute(_inp(["2"]), cfg).errors.all()
    cfg = RewardConfig(terms={"correctness": 1.0, f"{user_fns}:nan_term": 1.0})
    out = compute(_inp(["2"]), cfg)  # NaN is a value, not a failed call: it reaches the loss (the trainer skips it)
    assert not out.errors.any() and torch.isnan(out.total).all()


@pytest.mark.parametrize("spec,needle", [("nomodule_xyz:f", "cannot import 'nomodule_xyz'"),
                                         ("rewards.verifiers:nope", "has no function 'nope'"),
                                         ("/no/such/file.py:f", "does not exist"),
                                         ("justaname:", "'package.module:function'")])
def test_bad_user_function_names_the_field(spec, needle):
    with pytest.raises(ValueError, match="reward.correctness.verifier") as e:
        resolve_verifier(spec)
    assert needle in str(e.value)
    with pytest.raises(ValueError, match=r"reward.terms\["):
        check_names(RewardConfig(terms={spec: 1.0}))


def test_module_path_resolves():
    assert load_function("rewards.verifiers:exact_integer", "x")(GOOD, "2") is True


def test_validate_rejects_unimportable_verifier_before_anything_loads():
    from recipes.loader import load
    from trainers.config import validate

    cfg, _ = load("tiny_grpo", ["reward.correctness.verifier=not_a_module:fn"])
    with pytest.raises(ValueError, match="reward.correctness.verifier"):
        validate(cfg)
