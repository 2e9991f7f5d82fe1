"""Correctness verifiers: pure functions ``(completion text, reference answer) -> bool``.

Format gates (does the completion end its thinking and state a final answer?) are kept here, separate from
the length terms, so a length term never has to know how an answer is parsed.

The embedded task's completions look like::

    <think>
    7+5=12. 12*3=36. ...
    </think>
    Answer: 36

The final answer is the integer after the *last* ``Answer:`` marker that follows ``</think>``. A completion
without a closed thinking section or without an answer line fails the format gate and is incorrect.

``math`` (real math data sets) checks LaTeX / numeric answers with Hugging Face's ``math_verify``.
"""
from __future__ import annotations

import re

from laconic.registry import Registry

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_PREFIX = "Answer:"

_ANSWER_RE = re.compile(r"Answer:\s*(-?\d+)\s*$")


def extract_answer(completion: str) -> str | None:
    """Return the final integer answer as a string, or ``None`` when the format gate fails.

    >>> extract_answer("<think>\\n1+1=2.\\n</think>\\nAnswer: 2")
    '2'
    >>> extract_answer("<think>\\n1+1=2.\\nAnswer: 2") is None   # thinking never closed
    True
    """
    close = completion.rfind(THINK_CLOSE)
    if close < 0:
        return None
    tail = completion[close + len(THINK_CLOSE):].strip()
    m = _ANSWER_RE.fullmatch(tail) or _ANSWER_RE.search(tail)
    if m is None or not tail.startswith(ANSWER_PREFIX):
        return None
    return str(int(m.group(1)))


def exact_integer(completion: str, answer: str) -> bool:
    """True when the parsed final answer equals ``answer`` as an integer (``"007" == "7"``)."""
    got = extract_answer(completion)
    if got is None:
        return False
    try:
        return int(got) == int(answer)
    except ValueError:
        return False


def thinking_span(completion: str) -> tuple[int, int] | None:
    """Character span ``[start, end)`` of the thinking text between ``<think>`` and ``</think>``."""
    start = completion.find(THINK_OPEN)
    end = completion.find(THINK_CLOSE)
    if start < 0 or end < 0 or end < start:
        return None
    return start + len(THINK_OPEN), end


MATH_TIMEOUT_S = 5  # math_verify's own per-call limit (its default), for parse and for verify


def math_equivalent(completion: str, answer: str, timeout_s: int = MATH_TIMEOUT_S) -> bool:
    """True when ``math_verify`` finds the final answer mathematically equal to ``answer``.

    The prediction is the text after the last ``</think>`` (the whole completion when there is none); it is parsed
    with math_verify's default extraction (``\\boxed{}`` first, then LaTeX and plain expressions). The reference is
    parsed as LaTeX math (wrapped in ``$...$`` unless it already has ``$`` or ``\\boxed``). Both calls use
    math_verify's SIGALRM timeouts (``parsing_timeout`` / ``timeout_seconds``), so adversarial input cannot hang a
    step; a timeout counts as incorrect. SIGALRM works only in the main thread: math_verify raises ``ValueError``
    when this runs in another thread. Example: ``\\boxed{\\frac{1}{2}}`` vs ``"0.5"`` -> True; vs ``"1/3"`` -> False.
    """
    close = completion.rfind(THINK_CLOSE)
    tail = completion[close + len(THINK_CLOSE):] if close >= 0 else completion
    return math_equal(tail, answer, timeout_s)


def math_equal(text: str, answer: str, timeout_s: int = MATH_TIMEOUT_S) -> bool:
    """math_verify's verdict on whether ``text`` (default extraction: ``\\boxed{}``, then LaTeX and plain
    expressions) states a value equal to ``answer`` (parsed as LaTeX math, wrapped in ``$...$`` unless it already has
    ``$`` or ``\\boxed``); empty text or answer is False."""
    from math_verify import parse, verify  # lazily: heavy (sympy), and only math data sets need it

    ref = str(answer).strip()
    if not text.strip() or not ref:
        return False
    gold = parse(ref if "$" in ref or "\\boxed" in ref else f"${ref}$", parsing_timeout=timeout_s)
    pred = parse(text, parsing_timeout=timeout_s)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=timeout_s))


VERIFIERS = Registry("verifier")
VERIFIERS.add("exact_integer", exact_integer)
VERIFIERS.add("math", math_equivalent)
SELF_TIMED = {"math"}  # verifiers running their own SIGALRM timers (rewards.guard must not replace them)
