"""DECS (Jiang et al. 2025, "Overthinking Reduction with Decoupled Rewards and Curriculum Data Scheduling").

The thinking text is split into chunks at step boundaries; the first chunk that already contains the correct
final answer ends the *necessary* prefix, and every token after it up to ``</think>`` is *redundant*.
Token rewards (released code, beta = 0.1), for a correct completion of n tokens:

    necessary tokens and tokens after the thinking:  1 + beta
    redundant tokens:                                1 + beta * (1 - n / L_max)

and 0 on every token of an incorrect completion. Example: beta=.1, L_max=400, a correct 200-token completion
whose answer first appears at the end of token 60 and whose thinking closes at token 180: tokens 0-59 and
180-199 get 1.1, tokens 60-179 get 1.05. The advantage ``token_group`` then normalises per position within
the group, so a redundant token scores below a necessary token at the same position of a sibling.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from rewards.guard import is_user_function
from rewards.registry import register_term, user_function
from rewards.types import RewardInput
from rewards.verifiers import thinking_span

if TYPE_CHECKING:
    from rewards.config import RewardConfig

_STEP_END = re.compile(r"(?<=[.!?])\s+|\n+")


def split_chunks(thinking: str) -> list[tuple[int, int]]:
    """Character spans of reasoning steps: sentences and lines of the thinking text."""
    spans, start = [], 0
    for m in _STEP_END.finditer(thinking):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(thinking):
        spans.append((start, len(thinking)))
    return spans


def answer_value(chunk: str, answer: str) -> bool:
    """Rule-based detector for computed answers: the chunk states ``= answer`` as a result (e.g. ``9*4=36.``)."""
    return re.search(rf"=\s*{re.escape(answer)}(?!\d)", chunk) is not None


def math_answer(chunk: str, answer: str) -> bool:
    """Detector for math data sets: math-verify finds a value the chunk states (``\\boxed{}``, LaTeX or a plain
    expression, its default extraction) equal to the reference answer. Chunks that do not even contain the reference's
    digits are skipped before parsing (most chunks, and parsing is the expensive part). Example: answer "1/2",
    chunk "so the probability is \\frac{1}{2}." -> True; "we need half of the 1st and 2nd terms" -> False."""
    from rewards.verifiers import math_equal

    ref = str(answer).strip()
    if not ref or not all(d in chunk for d in re.findall(r"\d+", ref)):
        return False
    return math_equal(chunk, ref)


DETECTORS: dict[str, Callable[[str, str], bool]] = {"answer_value": answer_value, "math_answer": math_answer}


def detector_fn(name: str) -> Callable[[str, str], bool]:
    """A registered detector, or a user one named ``"module:function"`` / ``"file.py:function"`` with the same
    signature ``(chunk, answer) -> bool`` (e.g. a judge model behind a vLLM server)."""
    if name in DETECTORS:
        return DETECTORS[name]
    if is_user_function(name):
        return user_function(name, "reward.decs.detector")
    raise KeyError(f"reward.decs.detector={name!r} is unknown; choose from {sorted(DETECTORS)} or name a function as "
                   "'module:function'")


def answer_chunk(completion: str, answer: str, detector: str = "answer_value"):
    """-> (thinking span, its chunk spans, index of the first answer-bearing chunk), or None when the thinking is not
    closed or no chunk holds the answer. Chunk spans are relative to the thinking's start."""
    span = thinking_span(completion)
    if span is None:
        return None
    body = completion[span[0]:span[1]]
    chunks, found = split_chunks(body), detector_fn(detector)
    first = next((j for j, (a, b) in enumerate(chunks) if found(body[a:b], answer)), None)
    return None if first is None else (span, chunks, first)


def first_answer_end(completion: str, answer: str, detector: str = "answer_value") -> tuple[int, int] | None:
    """-> (char offset where the first answer-bearing chunk ends, char offset of ``</think>``), or None when the
    thinking is not closed or no chunk holds the answer (then no token is redundant)."""
    hit = answer_chunk(completion, answer, detector)
    if hit is None:
        return None
    (start, end), chunks, first = hit
    return start + chunks[first][1], end


def redundant_mask(inp: RewardInput, detector: str) -> torch.Tensor:
    """[B,T] bool: tokens that start after the first answer-bearing chunk and before ``</think>``."""
    if inp.token_offsets is None:
        raise ValueError("the decs term needs RewardInput.token_offsets (character offset of every token)")
    width = max((len(o) for o in inp.token_offsets), default=0)
    out = torch.zeros(len(inp.completions), width, dtype=torch.bool)
    for i, (text, offs, m) in enumerate(zip(inp.completions, inp.token_offsets, inp.meta)):
        span = first_answer_end(text, str(m["answer"]), detector)
        if span is not None:
            o = torch.tensor(offs)
            out[i, :len(offs)] = (o >= span[0]) & (o < span[1])
    return out


@dataclass
class DECSConfig:
    beta: float = 0.1  # token reward 1 + beta on necessary tokens, 1 + beta * (1 - n / max_len) on redundant ones
    max_len: int = 0  # L_max of the redundant-token reward; 0 = the rollout's completion cap (filled by the trainer)
    detector: str = "answer_value"  # first-answer-chunk detector: rewards.decs.DETECTORS name or "module:function"


@register_term("decs", token_level=True, config=DECSConfig)
def decs(inp: RewardInput, cfg: RewardConfig) -> torch.Tensor:
    """[B,T] token rewards (0 beyond each completion's tokens)."""
    d = cfg.decs
    max_len = d.max_len if d.max_len > 0 else (inp.max_tokens or 0)
    if max_len <= 0:
        raise ValueError("reward.decs.max_len must be > 0, or 0 with RewardInput.max_tokens set (the rollout's cap)")
    red = redundant_mask(inp, d.detector)
    n = inp.num_tokens.to(torch.float32)[:, None]
    valid = torch.arange(red.shape[1])[None, :] < n
    r = torch.where(red, 1 + d.beta * (1 - n / max_len), torch.full_like(n, 1 + d.beta).expand_as(red))
    return torch.where(valid & inp.correct[:, None], r, torch.zeros_like(r))
