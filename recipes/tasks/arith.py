"""Multi-step integer arithmetic: a tiny, fully synthetic reasoning task with "overthinking" traces.

A problem is a start value and a few operations, all values kept in ``[0, 99]`` so a ~0.5M-parameter
character-level model can learn the arithmetic. The prompt ends with a newline and the completion begins with
``<think>\\n`` (the prompt string ends exactly where the model's completion starts)::

    prompt:     "Start with 7. Add 5, then multiply by 3, then subtract 4.\\n"
    completion: "<think>\\n7+5=12. 12*3=36. 36-4=32.\\n"
                "Let me double-check (1).\\n7+5=12. 12*3=36. 36-4=32.\\n"
                "</think>\\nAnswer: 32"

Traces re-check their (already correct) answer a long-tailed number of times: that redundant re-checking is the
length the RL later learns to remove. Re-checks are numbered so a tiny model can learn the cap exactly (a bounded
maximum length) instead of having to count identical passes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
MAX_VALUE = 99
START_MAX = 49
MAX_OPERAND = 3  # tiny operands keep the digit tables tiny: a ~0.5M model learns them within a 3-minute SFT
MAX_MULTIPLIER = 3
NUMBER_WIDTH = 2  # zero-padded numbers in the worked steps: fixed digit positions make the arithmetic learnable
N_OPS = 3
RECHECK_CONTINUE = 0.7  # probability of one more re-check; truncated geometric => long tail
MAX_RECHECKS = 6

_WORDS = {"+": "add {b}", "-": "subtract {b}", "*": "multiply by {b}"}


@dataclass(frozen=True)
class Problem:
    start: int
    ops: tuple[tuple[str, int], ...]  # (operator, operand), operator in "+-*"

    def values(self) -> list[int]:
        """Intermediate values, ``values()[0] == start`` and ``values()[-1]`` the answer."""
        vals = [self.start]
        for op, b in self.ops:
            vals.append(_apply(vals[-1], op, b))
        return vals

    @property
    def answer(self) -> int:
        return self.values()[-1]


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def sample_problem(rng: random.Random, n_ops: int = N_OPS) -> Problem:
    """Draw a problem whose every intermediate value stays in ``[0, MAX_VALUE]``."""
    value = rng.randint(2, START_MAX)
    start, ops = value, []
    for _ in range(n_ops):
        choices = ["+"] if value < MAX_VALUE else []
        choices += ["-"] if value >= 1 else []
        choices += ["*"] if 2 * value <= MAX_VALUE and value >= 1 else []
        op = rng.choice(choices)
        if op == "+":
            b = rng.randint(1, min(MAX_OPERAND, MAX_VALUE - value))
        elif op == "-":
            b = rng.randint(1, min(MAX_OPERAND, value))
        else:
            b = rng.randint(2, min(MAX_MULTIPLIER, MAX_VALUE // value))
        ops.append((op, b))
        value = _apply(value, op, b)
    return Problem(start, tuple(ops))


def format_prompt(problem: Problem) -> str:
    """The prompt text; it ends with ``"\\n"`` and the completion starts with ``"<think>\\n"``."""
    steps = ", then ".join(_WORDS[op].format(b=b) for op, b in problem.ops)
    return f"Start with {problem.start}. {steps[0].upper()}{steps[1:]}.\n"


def parse_prompt(prompt: str) -> Problem:
    """Inverse of :func:`format_prompt` (rows only carry the prompt text)."""
    head, _, rest = prompt.strip().partition(". ")
    start = int(head.removeprefix("Start with "))
    ops = []
    for step in rest.rstrip(".").split(", then "):
        step = step.lower()
        for op, word in _WORDS.items():
            prefix = word.split("{")[0]
            if step.startswith(prefix):
                ops.append((op, int(step[len(prefix):])))
                break
        else:
            raise ValueError(f"cannot parse step {step!r} in {prompt!r}")
    return Problem(start, tuple(ops))


def worked_steps(problem: Problem) -> str:
    """One pass of the computation, e.g. ``"7+5=12. 12*3=36. 36-4=32.\\n"``."""
    vals = problem.values()
    w = NUMBER_WIDTH
    parts = [f"{a:0{w}d}{op}{b:0{w}d}={c:0{w}d}." for a, (op, b), c in zip(vals, problem.ops, vals[1:])]
    return " ".join(parts) + "\n"


def sample_rechecks(rng: random.Random) -> int:
    """Truncated geometric number of re-checks: most traces have 0-1, a tail has up to ``MAX_RECHECKS``."""
    n = 0
    while n < MAX_RECHECKS and rng.random() < RECHECK_CONTINUE:
        n += 1
    return n


def make_trace(problem: Problem | dict | str, rng: random.Random, n_rechecks: int | None = None) -> str:
    """Completion text in distilled-reasoning style (worked steps + redundant re-checks + final answer).

    ``problem`` may be a :class:`Problem`, a split row (``{"prompt": ...}``) or a prompt string.
    ``n_rechecks=0`` gives the minimal correct completion.
    """
    if not isinstance(problem, Problem):
        problem = parse_prompt(problem["prompt"] if isinstance(problem, dict) else problem)
    if n_rechecks is None:
        n_rechecks = sample_rechecks(rng)
    body = worked_steps(problem)
    text = f"{THINK_OPEN}\n{body}"
    for i in range(1, n_rechecks + 1):
        text += f"Let me double-check ({i}).\n{body}"
    return f"{text}{THINK_CLOSE}\nAnswer: {problem.answer}"


def make_splits(seed: int, n_train: int, n_eval: int, n_ops: int = N_OPS) -> tuple[list[dict], list[dict]]:
    """Disjoint train/eval rows ``{"uid", "prompt", "answer"}``, a pure function of the arguments."""
    rng = random.Random(f"arith-splits-{seed}")
    seen: set[Problem] = set()
    problems: list[Problem] = []
    attempts = 0
    while len(problems) < n_train + n_eval:
        attempts += 1
        if attempts > 50 * (n_train + n_eval) + 1000:
            raise ValueError(f"cannot draw {n_train + n_eval} distinct problems with n_ops={n_ops}")
        p = sample_problem(rng, n_ops)
        if p not in seen:
            seen.add(p)
            problems.append(p)

    rng.shuffle(problems)  # eval is a uniform subset of the distinct problems, not the rarest late draws

    def rows(split: str, ps: list[Problem]) -> list[dict]:
        return [{"uid": f"arith-{split}-{i:05d}", "prompt": format_prompt(p), "answer": str(p.answer)}
                for i, p in enumerate(ps)]

    return rows("train", problems[:n_train]), rows("eval", problems[n_train:])


def trace_rng(seed: int, uid: str) -> random.Random:
    """Per-row RNG so a row's trace does not depend on which other rows were generated."""
    return random.Random(f"arith-trace-{seed}-{uid}")
