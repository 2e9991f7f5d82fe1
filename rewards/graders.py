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
=============== =============================== ===================================================================

Every grader scores 1 / 0 in its paper's training (format errors 0), which is what the correctness term's
``correct`` / ``incorrect`` values give.

``deepscaler``'s symbolic step: DeepScaleR first decides two cases structurally (two fractions ``a/b`` must be the
same string, so an unreduced ``2/4`` is not ``1/2``; an integer never equals a non-integer), then asks sympy
whether the difference simplifies to 0 after its own normaliser. The structural rules and the normaliser's string
clean-up are DeepScaleR's; the final symbolic equality is math-verify's (``sympy`` underneath), not DeepScaleR's
``parse_expr`` pipeline.
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


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}`` (a braced numerator is left as it is)."""
    head, *rest = s.split("\\frac")
    out = head
    for part in rest:
        out += "\\frac"
        if part and part[0] == "{":
            out += part
        elif len(part) < 2:
            return s
        elif part[1] != "{":
            out += "{" + part[0] + "}{" + part[1] + "}" + part[2:]
        else:
            out += "{" + part[0] + "}" + part[1:]
    return out


def _fix_a_slash_b(s: str) -> str:
    """``3/4`` (two integers) -> ``\\frac{3}{4}``."""
    parts = s.split("/")
    if len(parts) == 2 and re.fullmatch(r"-?\d+", parts[0]) and re.fullmatch(r"-?\d+", parts[1]):
        return "\\frac{" + parts[0] + "}{" + parts[1] + "}"
    return s


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    head, *rest = s.split("\\sqrt")
    return head + "".join("\\sqrt" + (p if not p or p[0] == "{" else "{" + p[0] + "}" + p[1:]) for p in rest)


def mathd_normalize(s: str) -> str:
    """The MATH data set's answer normaliser (Hendrycks et al. 2021), as DeepScaleR's ``grade_answer_mathd`` applies
    it to both sides: a whole-string ``\\text{...}`` unwrapped; line breaks, ``\\!``, ``\\left``/``\\right``,
    degrees, ``\\$`` and percent signs removed; ``tfrac``/``dfrac`` -> ``frac``; right-hand ``\\text{ units}`` cut;
    ``.5`` -> ``0.5``; a short ``k=`` prefix dropped; ``\\sqrt3`` / ``\\frac12`` braced; spaces removed; ``0.5`` ->
    ``\\frac{1}{2}``; ``a/b`` -> ``\\frac{a}{b}``."""
    s = s.strip()
    m = re.fullmatch(r"\\text\{(.*)\}", s)
    if m:
        s = m.group(1)
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "")
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


# --------------------------------------------------------------------------- DeepScaleR's symbolic comparison

_UNITS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month", "year",
          "foot", "feet", "inch", "yard")


def _symbolic_normalize(s: str) -> str:
    """DeepScaleR's second normaliser, string clean-up only: ``\\text{}`` unwrapped, ``$``/``%`` removed, ``or``/``and``
    -> ``,``, million/billion/trillion -> powers of ten, unit words and degrees dropped, one outer ``{}`` stripped,
    an integral float -> its integer, spaces removed, lower-cased, thousands commas of an integer removed."""
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    s = s.replace("$", "").replace("\\%", "").replace("%", "").replace(" or ", " , ").replace(" and ", " , ")
    for word, power in (("million", "*10^6"), ("billion", "*10^9"), ("trillion", "*10^12")):
        s = s.replace(word, power)
    for unit in _UNITS:
        s = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", s)
    s = re.sub(r"\^ *\\circ", "", s)
    if len(s) > 1 and s[0] == "{" and s[-1] == "}":
        s = s[1:-1]
    s = s.strip()
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    s = s.replace(" ", "").lower()
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", s):
        s = s.replace(",", "")
    return s


def _is_int(s: str) -> bool:
    return re.fullmatch(r"-?\d+", s) is not None


def _is_frac(s: str) -> bool:
    return re.fullmatch(r"-?\d+/\d+", s) is not None


def symbolic_equal(pred: str, ref: str, timeout_s: int = MATH_TIMEOUT_S) -> bool:
    """DeepScaleR's ``grade_answer_sympy`` decisions (module docstring), element by element for bracketed tuples of
    the same length; the symbolic equality of what is left is math-verify's."""
    from math_verify import parse, verify

    p, r = _symbolic_normalize(pred), _symbolic_normalize(ref)
    if not p:
        return False
    if p == r:
        return True
    ps, rs = _split_tuple(p), _split_tuple(r)
    if len(ps) != len(rs) or (len(rs) > 1 and (p[0] != r[0] or p[-1] != r[-1])):
        return False
    for a, b in zip(ps, rs):
        if a == b:
            continue
        if _is_frac(a) and _is_frac(b):
            return False  # fractions must be written the same way
        if _is_int(a) != _is_int(b):
            return False  # an integer never equals a non-integer
        gold, got = parse(f"${b}$", parsing_timeout=timeout_s), parse(f"${a}$", parsing_timeout=timeout_s)
        if not (gold and got and verify(gold, got, timeout_seconds=timeout_s)):
            return False
    return True


def _split_tuple(s: str) -> list[str]:
    """Elements of a bracketed tuple / interval ``(a,b)`` / ``[a,b]``, else ``[s]``."""
    if len(s) > 2 and s[0] in "([" and s[-1] in ")]" and "," in s:
        return [e.strip() for e in s[1:-1].split(",")]
    return [s]


# --------------------------------------------------------------------------- the graders


def deepscaler(completion: str, answer: str, timeout_s: int = MATH_TIMEOUT_S) -> bool:
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
    return any(mathd_normalize(pred) == mathd_normalize(r) or symbolic_equal(pred, r, timeout_s) for r in refs)


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


SELF_TIMED.update({"deepscaler", "decs", "math_verify"})  # math-verify runs its own SIGALRM timers
VERIFIERS.add("deepscaler", deepscaler)
VERIFIERS.add("decs", decs)
VERIFIERS.add("math_verify", math_verify_grader)
