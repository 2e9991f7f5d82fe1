"""The papers' graders, each as its released code grades (expected verdicts derived by hand from that code)."""
import pytest

from rewards.graders import deepscaler, decs, last_boxed, math_verify_grader, mathd_normalize, sympy_normalize, symbolic_equal
from rewards.verifiers import VERIFIERS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("completion, answer, verdict", [
    ("<think>..</think> So the answer is \\boxed{\\frac12}.", "0.5", True),     # MATH normalisation: both \frac{1}{2}
    ("<think>.. the answer is \\boxed{0.5}", "0.5", False),                       # no </think>: the box in the thinking
    ("<think>a</think> \\boxed{3} </think> \\boxed{0.5}", "0.5", False),          # two </think>: graded is the first's
    ("<think>a</think> The answer is 0.5.", "0.5", False),                        # no \boxed{} after </think>
    ("<think>a</think> \\boxed{2/4}", "1/2", False),                              # fractions must match as written
    ("<think>a</think> \\boxed{10.0}", "10", True),                               # integral float -> integer
    ("<think>a</think> \\boxed{\\dfrac{3}{4}}", "\\frac34", True),
    ("<think>a</think> \\boxed{x+1}", "1+x", True),                               # symbolic equality
    ("<think>a</think> \\boxed{5}", ["3", "5"], True),                            # any of several references
    ("<think>a</think> \\boxed{7}", "\\boxed{7}", True),                          # a boxed reference is unboxed
    ("<think>a</think> \\boxed 7", "7", False),                                   # \boxed without braces
    # the sympy stage (PRM800K's grader inside DeepScaleR), each verdict traced through grade_answer_sympy by hand
    ("</think> \\boxed{3\\frac{1}{2}}", "7/2", True),       # pylatexenc: "3 1/2" -> mixed number "3+1/2" == 7/2
    ("</think> \\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt2}{2}", True),  # both render "sqrt(2)/2"
    ("</think> \\boxed{(1,2)}", "(1, 2)", True),             # element-wise after spaces go
    ("</think> \\boxed{[1,2)}", "(1,2)", False),             # a tuple must open with the same bracket
    ("</think> \\boxed{1,000}", "1000", True),               # thousands comma of an integer
    ("</think> \\boxed{50%}", "50", True),                   # bare % dropped by the sympy normaliser only
    ("</think> \\boxed{2\\pi}", "2 \\pi", True),
    ("</think> \\boxed{0.333}", "1/3", False),               # no numeric tolerance
    ("</think> \\boxed{x^2+2x+1}", "(x+1)^2", True),          # simplify((x+1)**2 - (x**2+2x+1)) == 0
    ("</think> \\boxed{2^{10}}", "1024", False),             # an integer reference needs an integer string
    ("</think> \\boxed{abc+d}", "d+abc", False),             # > 2 distinct letters: never evaluated
])
def test_deepscaler(completion, answer, verdict):
    """agentica-project/deepscaler @95ef74ff RewardMathFn (as cmu-l3/l1 and NVlabs/DLER vendor it)."""
    assert deepscaler(completion, answer) is verdict


@pytest.mark.parametrize("completion, answer, verdict", [
    ("<think>x</think> The answer is 7.", "7", True),        # no box needed
    ("<think>x</think> \\boxed{7}", "7", True),
    ("<think>x, so 7", "7", False),                          # no </think>
    ("<think>x</think> 7 </think> 7", "7", False),           # two </think>
    ("<think>x</think> \\boxed{8}", "7", False),
])
def test_decs(completion, answer, verdict):
    """pixas/DECS @0d12e536 math_verify.compute_score: exactly one </think>, math-verify after it."""
    assert decs(completion, answer) is verdict


def test_math_verify_needs_closed_thinking():
    assert math_verify_grader("<think>x</think> \\boxed{1/2}", "0.5") is True
    assert math_verify_grader("<think>x \\boxed{0.5}", "0.5") is False
    assert math_verify_grader("<think>x</think> \\boxed{3}", "0.5") is False


def test_the_lenient_math_verifier_is_what_the_graders_refuse():
    """``math`` (kept for data without a thinking section) accepts what no paper's grader does."""
    unfinished = "<think>so far \\boxed{0.5}"
    assert VERIFIERS["math"](unfinished, "0.5") is True
    assert not any(VERIFIERS[v](unfinished, "0.5") for v in ("deepscaler", "decs", "math_verify"))


def test_deepscaler_normalisers():
    """mathd_normalize_answer / _normalize as DeepScaleR's math_utils apply them."""
    assert mathd_normalize("50%") == "50%" and mathd_normalize("50\\%") == "50"   # mathd removes only \\%
    assert mathd_normalize(" \\frac") == "\\frac"          # an empty \\frac argument: the stripped input back
    assert mathd_normalize("1 \\text{ m} 2 \\text{ s}") == "1 \\text{ m} 2 \\text{ s}"   # two unit suffixes
    assert mathd_normalize("03/4") == "03/4" and mathd_normalize("-3/4") == "\\frac{-3}{4}"
    assert sympy_normalize("\\text{5 hours}") == "5" and sympy_normalize("2 million") == "2*10^6"
    assert sympy_normalize("7 3/4") == "7+3/4" and sympy_normalize("1,234,567") == "1234567"
    assert sympy_normalize("\\frac{1}{2}") == "1/2" and sympy_normalize("{X}") == "x"
    assert symbolic_equal("1/2", "2/4") is False and symbolic_equal("0.5", "1/2") is True


def test_deepscaler_runs_under_the_reward_timeout():
    """Its sympy stage has no timer of its own: the guard's reward.timeout_s applies (not so for math-verify's)."""
    from rewards.verifiers import SELF_TIMED

    assert "deepscaler" not in SELF_TIMED and {"decs", "math_verify"} <= SELF_TIMED


def test_helpers():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1") is None and last_boxed("none") is None
    assert mathd_normalize("k = 3") == "3" and mathd_normalize("\\text{5}") == "5"
    assert mathd_normalize("5\\text{ cm}") == "5" and mathd_normalize(".5") == "\\frac{1}{2}"
    assert mathd_normalize("\\sqrt3") == "\\sqrt{3}" and mathd_normalize("3/4") == "\\frac{3}{4}"
