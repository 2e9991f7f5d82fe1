"""Correctness graders of the length-control papers' released code, registered as verifiers by the grader's name.

Each states the format rule its authors' code applies before comparing answers, because the format rule is what
decides how unfinished thinking is scored, which is what a length reward must not learn to reward:

=============== =============================== ===================================================================
verifier        follows                         rule
=============== =============================== ===================================================================
``deepscaler``  agentica-project/deepscaler      the text after the FIRST ``</think>`` (up to a second one); its
                @95ef74ff ``RewardMathFn``       last ``\\boxed{...}``; equal after MATH normalisation or
                (also cmu-l3/l1, NVlabs/DLER)    symbolically. No ``</think>`` or no box: incorrect
``decs``        pixas/DECS @0d12e536             exactly one ``</think>`` (0 or 2+: incorrect); math-verify on the
                ``math_verify.compute_score``    text after it (no box needed), the reference boxed
``math_verify`` HF math-verify on the answer     ``</think>`` required; math-verify on the text after the first one
``reasoning_``  open-thought/reasoning-gym        the last ``<answer>..</answer>`` span, the task's ``score_answer``;
``gym``         ``extract_answer`` + task score   correct at 1.0 (rows from ``data.task=rg:NAME`` / ``gsm8k``)
``reasoning_``  the same task score               the completion's last number instead of the ``<answer>`` span
``gym_number``
=============== =============================== ===================================================================

Every grader scores 1 / 0 in its paper's training (format errors 0), which is what the correctness term's
``correct`` / ``incorrect`` values give.

``deepscaler`` is DeepScaleR's two-stage comparison whole: the MATH normaliser on both sides, then PRM800K's
sympy grader (its own normaliser, pylatexenc's LaTeX-to-text, ``parse_expr`` with implicit multiplication and
``simplify``), including the rules that make it strict: an unreduced fraction is not its reduced form and an integer
never equals a non-integer. It runs under ``reward.timeout_s``; the math-verify graders run their own timers.
"""
from __future__ import annotations

import re

from rewards.verifiers import MATH_TIMEOUT_S, SELF_TIMED, THINK_CLOSE, VERIFIERS

# --------------------------------------------------------------------------- answer extraction


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` of ``text`` (braces matched), or None: no ``\\boxed``, unclosed
    braces, or a last ``\\boxed`` not followed by ``{`` (``\\boxed 5``)."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def after_first_think(completion: str) -> str | None:
    """The text between the first ``</think>`` and a second one (or the end); None without ``</think>``."""
    parts = completion.split(THINK_CLOSE)
    return parts[1] if len(parts) > 1 else None


# --------------------------------------------------------------------------- MATH normalisation (Hendrycks)


class _Unnormalisable(Exception):
    """The MATH normaliser hit input its string surgery does not handle (an empty ``\\frac`` / ``\\sqrt`` argument,
    two ``\\text{ `` unit suffixes): DeepScaleR then compares the answer as it was, un-normalised."""


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``; a braced numerator is left as it is; a
    one-character argument leaves the whole string unchanged; an empty one is unnormalisable."""
    head, *rest = s.split("\\frac")
    out = head
    for part in rest:
        out += "\\frac"
        if not part:
            raise _Unnormalisable(s)
        if part[0] == "{":
            out += part
        elif len(part) < 2:
            return s
        elif part[1] != "{":
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "{" + part[0] + "}" + part[1:]
    return out


def _fix_a_slash_b(s: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` when both sides are integers written canonically (``int`` round trip: ``03/4`` and
    ``+3/4`` stay as they are)."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``; ``\\sqrt`` with nothing after it is unnormalisable."""
    if "\\sqrt" not in s:
        return s
    head, *rest = s.split("\\sqrt")
    for part in rest:
        if not part:
            raise _Unnormalisable(s)
        head += "\\sqrt" + (part if part[0] == "{" else "{" + part[0] + "}" + part[1:])
    return head


def _strip_string(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # a unit suffix, cut; more than one is unnormalisable
        pieces = s.split("\\text{ ")
        if len(pieces) != 2:
            raise _Unnormalisable(s)
        s = pieces[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def mathd_normalize(answer: str) -> str:
    """The MATH data set's answer normaliser (Hendrycks et al. 2021), as DeepScaleR's ``mathd_normalize_answer``
    applies it to both sides: stripped; a whole-string ``\\text{...}`` unwrapped; line breaks, ``\\!``,
    ``\\left``/``\\right``, degrees, ``\\$`` and ``\\%`` removed; ``tfrac``/``dfrac`` -> ``frac``; a right-hand
    ``\\text{ units}`` cut; ``.5`` -> ``0.5``; a short ``k=`` prefix dropped; ``\\sqrt3`` / ``\\frac12`` braced;
    spaces removed; ``0.5`` -> ``\\frac{1}{2}``; ``a/b`` -> ``\\frac{a}{b}``. Unnormalisable input comes back
    stripped and unwrapped, as DeepScaleR's ``except`` returns it."""
    s = answer.strip()
    m = re.fullmatch(r"\\text\{(.+?)\}", s)
    if m:
        s = m.group(1).strip()
    try:
        return _strip_string(s)
    except _Unnormalisable:
        return s


# --------------------------------------------------------------------------- DeepScaleR's sympy comparison (PRM800K)

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month", "year",
          "foot", "feet", "inch", "yard")
_TUPLE_CHARS = "()[]"
# sympy can hang on these; DeepScaleR refuses to evaluate them rather than be lenient
_BAD_SUBSTRINGS = ("^{", "^(")
_BAD_REGEXES = (r"\^[0-9]+\^", r"\^[0-9][0-9]+")
_LATEX_SYMBOLS = (("√", "sqrt"), ("π", "pi"), ("∞", "inf"), ("∪", "U"), ("·", "*"), ("×", "*"))


def _latex_to_text(expr: str) -> str:
    """LaTeX -> text sympy can read: pylatexenc's plain-text rendering, with its Unicode symbols spelled out;
    ``\\frac`` gets a leading space so that a mixed number ``3\\frac12`` reads ``3 1/2``."""
    from pylatexenc.latex2text import LatexNodes2Text

    expr = expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac").replace("\\frac", " \\frac")
    expr = LatexNodes2Text().latex_to_text(expr)
    for symbol, word in _LATEX_SYMBOLS:
        expr = expr.replace(symbol, word)
    return expr.strip()


def _float_or_none(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _near_int(x: float) -> bool:
    try:
        return abs(x - int(round(x))) <= 1e-7
    except (OverflowError, ValueError):  # inf, nan
        return False


def _strip_thousands_commas(expr: str) -> str:
    """``1,234,567`` -> ``1234567``, leaving tuple commas (``(1,2)``) alone."""
    pattern = re.compile(r"(\d)(,)(\d\d\d)($|\D)")
    while True:
        nxt = pattern.sub(r"\1\3\4", expr)
        if nxt == expr:
            return nxt
        expr = nxt


def _str_is_int(s: str) -> bool:
    x = _float_or_none(_strip_thousands_commas(s))
    return x is not None and _near_int(x)


def _is_frac(expr: str) -> bool:
    return re.search(r"^-?[0-9]+.?/0*[1-9][0-9]*.?$", expr) is not None


def sympy_normalize(expr: str) -> str:
    """DeepScaleR's second normaliser (``_normalize``, from PRM800K's grader): whole-string ``\\text{}`` unwrapped;
    ``$``/``%`` removed; `` or ``/`` and `` -> `` , ``; million/billion/trillion -> ``*10^k``; unit words (plural,
    with a power) and ``^\\circ`` dropped; one outer ``{}`` stripped; ``,\\!`` thousands separators removed; an
    integral float -> its integer; LaTeX rendered as text (pylatexenc); ``- `` joined; a mixed number ``7 3/4`` ->
    ``7+3/4``; spaces and braces removed; lower-cased; an integer (thousands commas allowed) -> its digits."""
    m = re.search(r"^\\text\{(?P<text>.+?)\}$", expr)
    if m is not None:
        expr = m.group("text")
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    for word, power in (("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12")):
        expr = expr.replace(word, power)
    for unit in _UNITS:
        expr = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr and expr[0] == "{" and expr[-1] == "}":
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    x = _float_or_none(expr)
    if x is not None and _near_int(x):
        expr = str(int(round(x)))
    if "\\" in expr:
        try:
            expr = _latex_to_text(expr)
        except Exception:  # noqa: BLE001 -- pylatexenc rejects malformed LaTeX; DeepScaleR then keeps the string
            pass
    expr = re.sub(r"- *", "-", expr)
    expr = re.sub(r"([0-9]) +([0-9])", r"\1+\2", expr)
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(int(float(expr.replace(",", ""))))
    return expr


def _may_evaluate(expr: str) -> bool:
    """No more than two distinct unknown letters (``sqrt``/``frac`` aside) and none of the exponent shapes sympy
    can hang on: DeepScaleR's guard before ``parse_expr``, which ``eval``s its input."""
    letters = {c for c in expr.replace("sqrt", "").replace("frac", "") if c.isalpha()}
    return (len(letters) <= 2 and not any(b in expr for b in _BAD_SUBSTRINGS)
            and not any(re.search(r, expr) for r in _BAD_REGEXES))


def _sympy_equal(ref: str, pred: str) -> bool:
    """``simplify((ref) - (pred)) == 0`` under sympy's standard transformations plus implicit multiplication and
    function application, ``^`` read as power. A parse or simplify error is inequality. Only ``Exception`` is
    caught (DeepScaleR catches everything), so that ``reward.timeout_s``'s alarm still stops a runaway simplify."""
    import sympy
    from sympy.parsing import sympy_parser

    diff = f"({ref})-({pred})"
    if not _may_evaluate(diff):
        return False
    transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
    try:
        return sympy.simplify(sympy_parser.parse_expr(diff.replace("^", "**"), transformations=transformations)) == 0
    except Exception:  # noqa: BLE001 -- any sympy failure means "not shown equal"
        return False


def _split_tuple(expr: str) -> list[str]:
    """Elements of a tuple / interval (``(a,b)``, ``[a,b)``: bracket characters only at the ends), thousands
    commas kept inside numbers; ``[]`` for the empty string; else ``[expr]``."""
    expr = _strip_thousands_commas(expr)
    if not expr:
        return []
    if (len(expr) > 2 and expr[0] in _TUPLE_CHARS and expr[-1] in _TUPLE_CHARS
            and not any(ch in expr[1:-1] for ch in _TUPLE_CHARS)):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def symbolic_equal(pred: str, ref: str) -> bool:
    """DeepScaleR's ``grade_answer_sympy``: both sides through :func:`sympy_normalize`; equal strings are equal; an
    empty prediction is not; tuples must open and close with the same brackets and have as many elements; element
    by element, two fractions ``a/b`` must be the same string (an unreduced ``2/4`` is not ``1/2``), an integer
    never equals a non-integer, anything else is equal when sympy simplifies the difference to 0."""
    r, p = sympy_normalize(ref), sympy_normalize(pred)
    if r == p:
        return True
    if not p:
        return False
    rs, ps = _split_tuple(r), _split_tuple(p)
    if len(rs) > 1 and (r[0] != p[0] or r[-1] != p[-1]):
        return False
    if len(rs) != len(ps):
        return False
    for a, b in zip(rs, ps):
        if _is_frac(a) and _is_frac(b):
            ok = a == b
        elif _str_is_int(a) != _str_is_int(b):
            ok = False
        else:
            ok = _sympy_equal(a, b)
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- the graders


def deepscaler(completion: str, answer) -> bool:
    """DeepScaleR's grader (agentica-project/deepscaler @95ef74ff, ``deepscaler/rewards/math_reward.py``
    ``RewardMathFn.__call__`` with ``math_utils`` ``extract_answer`` / ``grade_answer_mathd`` /
    ``grade_answer_sympy``; the same in cmu-l3/l1 @c3b546e6 and NVlabs/DLER @498b8ed6).

    Examples (reference ``0.5``): ``<think>..</think> so \\boxed{\\frac12}`` -> True; ``<think>.. \\boxed{0.5}``
    (no ``</think>``) -> False; ``<think>a</think> \\boxed{3} </think> \\boxed{0.5}`` -> False (graded: ``3``);
    ``</think> \\boxed{2/4}`` vs ``1/2`` -> False; ``</think> \\boxed{10.0}`` vs ``10`` -> True."""
    solution = after_first_think(completion)
    if solution is None:
        return False
    pred = last_boxed(solution)
    if pred is None:
        return False
    refs = []
    for ref in answer if isinstance(answer, (list, tuple)) else [answer]:
        ref = str(ref)
        if "\\boxed" in ref:
            ref = last_boxed(ref)
            if ref is None:
                continue
        refs.append(ref)
    return any(mathd_normalize(pred) == mathd_normalize(r) or symbolic_equal(pred, r) for r in refs)


def decs(completion: str, answer: str, timeout_s: int = MATH_TIMEOUT_S) -> bool:
    """DECS's grader (pixas/DECS @0d12e536, ``verl/utils/reward_score/math_verify.py`` ``compute_score``): exactly
    one ``</think>``; math-verify (prediction: expressions and LaTeX, no box needed) on the text after it against the
    reference wrapped in ``\\boxed{}`` (unless it has one).

    Examples (reference ``7``): ``<think>x</think> The answer is 7.`` -> True; no ``</think>`` -> False;
    ``<think>x</think> 7 </think> 7`` (two) -> False; ``<think>x</think> \\boxed{8}`` -> False."""
    from math_verify import LatexExtractionConfig, parse, verify

    if completion.count(THINK_CLOSE) != 1:
        return False
    pred_text = completion.split(THINK_CLOSE)[1]
    ref = str(answer)
    gold = parse(ref if "boxed" in ref else f"\\boxed{{{ref}}}", extraction_config=[LatexExtractionConfig()],
                 parsing_timeout=timeout_s)
    pred = parse(pred_text, parsing_timeout=timeout_s)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout_s))


def math_verify_grader(completion: str, answer: str, timeout_s: int = MATH_TIMEOUT_S) -> bool:
    """``</think>`` required; HF math-verify on the text after the first one (``\\boxed{}`` first, then LaTeX and
    plain expressions) against the reference as LaTeX. Example (reference ``0.5``): ``</think> \\boxed{1/2}`` ->
    True; ``<think> \\boxed{0.5}`` (thinking not closed) -> False."""
    from rewards.verifiers import math_equal

    solution = after_first_think(completion)
    return solution is not None and math_equal(solution, answer, timeout_s)


def reasoning_gym(completion: str, answer: str, meta: dict) -> bool:
    """reasoning-gym's own grading (``reasoning_gym.utils.extract_answer`` then the task's ``score_answer``, as its
    evaluation scripts do): the last ``<answer>...</answer>`` span (stripped), scored by the row's task (``meta["rg"]``:
    the entry, its ``metadata.source_dataset`` names the task); correct at a score of 1.0 (several tasks give partial
    credit, e.g. 0.01 for a wrong number in ``gsm_symbolic``). No span: incorrect. ``answer`` is the entry's own."""
    from reasoning_gym.utils import extract_answer as rg_extract

    return _rg_correct(rg_extract(completion), meta, "reasoning_gym")


def _rg_correct(pred: str | None, meta: dict, verifier: str) -> bool:
    """``pred`` scored by the row's reasoning-gym task (``meta["rg"]``, the entry); correct at 1.0; None: incorrect."""
    from reasoning_gym import get_score_answer_fn

    entry = meta.get("rg")
    if entry is None:
        raise ValueError(f"the {verifier} verifier needs rows from data.task=rg:NAME or data.eval_task=gsm8k (no "
                         f"'rg' field in this row)")
    if pred is None:
        return False
    return float(get_score_answer_fn(entry["metadata"]["source_dataset"])(pred, entry)) >= 1.0


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def reasoning_gym_number(completion: str, answer: str, meta: dict) -> bool:
    """The last number of the completion (thousands commas removed), scored by the row's reasoning-gym task as
    :func:`reasoning_gym` scores an ``<answer>`` span: for models too small to keep reasoning-gym's answer tags
    (SmolLM2-135M writes them in under 3% of completions), on tasks whose answer is one number. No number:
    incorrect."""
    numbers = _NUMBER.findall(completion.replace(",", ""))
    return _rg_correct(numbers[-1] if numbers else None, meta, "reasoning_gym_number")


# math-verify runs its own SIGALRM timers; deepscaler runs under reward.timeout_s
SELF_TIMED.update({"decs", "math_verify"})
VERIFIERS.add("deepscaler", deepscaler)
VERIFIERS.add("decs", decs)
VERIFIERS.add("math_verify", math_verify_grader)
VERIFIERS.add("reasoning_gym", reasoning_gym)
VERIFIERS.add("reasoning_gym_number", reasoning_gym_number)
