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
"""
from __future__ import annotations

import re

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


VERIFIERS = {"exact_integer": exact_integer}
