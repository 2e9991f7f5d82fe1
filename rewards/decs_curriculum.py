"""DECS curriculum data scheduling (Jiang et al. 2025, "Overthinking Reduction with Decoupled Rewards and
Curriculum Data Scheduling", arXiv 2509.25827, curriculum prompt schedule; released code
``src_valid/valid_ray_trainer.py`` (``kappa``, ``last_mean_nrp_ratio``) and
``ChunkAwareGRPO.batch_compute_chunk_adv`` (``first_correct_chunk_ratio``)).

Dynamic sampling drops groups whose rewards have no spread; DECS then adds back a share ``kappa`` of the
all-correct ones, because easy prompts carry most of the length signal but too many of them suppress the
high-entropy exploration tokens. ``kappa`` follows how early correct answers first appear:

    R_i   = (index of the first answer-bearing chunk + 1) / number of chunks      correct completion i
    R_m   = mean of R_i over correct completions with an answer-bearing chunk     (the NRP ratio of step m)
    kappa <- clip(kappa + beta * (R_m - R_{m-1}), 0, share of all-correct prompts)     beta = .2
    add   min(floor(kappa * K / (1 - kappa)), #all-correct) all-correct groups, K = groups kept by dynamic sampling,
          so all-correct groups make up a share ~kappa of the kept ones

with ``kappa_0 = 0`` and ``R_0 = .5`` as in the code. The clip is the paper's (the released code leaves it out).
Chunks are the thinking's sentences and lines and the answer detector is ``decs.DETECTORS`` (the code splits the
whole response at "Wait"/"But"/... and newline tokens and asks a judge model).

Example: ``R_{m-1} = .5``, this step R = .4 and .8 -> R_m = .6, share of all-correct prompts .3, kappa .1 ->
kappa = clip(.1 + .2 * .1, 0, .3) = .12; with K = 22 kept groups, floor(.12 * 22 / .88) = 3 all-correct groups
come back.

The trainer owns one :class:`DECSCurriculum` (checkpointed with the reward states): it calls ``observe`` on every
sampled batch of a step (all rounds, before filtering), gathers the updates of all ranks and rounds, ``apply``-s them
once per step after the update, and calls :func:`select` when it assembles the next batch.
"""
from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import torch

from rewards.decs import answer_chunk
from rewards.groups import group_mean
from rewards.types import RewardInput

if TYPE_CHECKING:
    from rewards.config import RewardConfig

Update = tuple[float, int, int, int]  # (sum of R_i, number of R_i, all-correct groups, groups)


def nrp_ratio(completion: str, answer: str, detector: str = "answer_value") -> float | None:
    """(first answer-bearing chunk index + 1) / number of thinking chunks, or None when the thinking is not closed,
    empty, or never states the answer. Example: chunks ["1+1=2.", "2*3=6.", "Check.", "2*3=6."], answer 6 -> 2/4."""
    hit = answer_chunk(completion, answer, detector)
    if hit is None:
        return None
    _, chunks, first = hit
    return (first + 1) / len(chunks)


def nrp_ratios(inp: RewardInput, detector: str = "answer_value") -> torch.Tensor:
    """[B] float64 R_i of the correct completions, NaN for wrong ones and ones without an answer-bearing chunk."""
    out = [nrp_ratio(t, str(m["answer"]), detector) if ok else None
           for t, m, ok in zip(inp.completions, inp.meta, inp.correct.tolist())]
    return torch.tensor([math.nan if r is None else r for r in out], dtype=torch.float64)


def all_correct_groups(inp: RewardInput) -> list[int]:
    """Sorted group ids whose every row is verified correct."""
    easy = group_mean(inp.correct, inp.group_ids) == 1.0
    return sorted(set(inp.group_ids[easy].tolist()))


def update(kappa: float, r_prev: float, r_now: float, share_all_correct: float, lr: float) -> float:
    """``clip(kappa + lr * (r_now - r_prev), 0, share_all_correct)``. Example: update(.1, .5, .6, .3, .2) = .12."""
    return min(max(kappa + lr * (r_now - r_prev), 0.0), share_all_correct)


def select(all_correct: list[int], num_kept: int, kappa: float, rng: random.Random) -> list[int]:
    """The all-correct group ids to add back: ``min(floor(kappa * num_kept / (1 - kappa)), len(all_correct))`` of
    them, drawn without replacement (all of them when kappa >= 1). Example: kappa .12, 22 kept -> 3."""
    if kappa <= 0 or not all_correct:
        return []
    want = math.floor(kappa * num_kept / (1 - kappa) + 1e-9) if kappa < 1 else len(all_correct)  # 1e-9: .12*22/.88
    n = min(want, len(all_correct))
    return sorted(rng.sample(sorted(all_correct), n))


class DECSCurriculum:
    """``kappa`` and ``R_{m-1}``; ``observe``/``apply`` reduce over ranks and sampling rounds like the term states."""

    def __init__(self, cfg: RewardConfig) -> None:
        c = cfg.decs_curriculum
        self.lr, self.detector = c.lr, cfg.decs.detector
        self.kappa, self.r_prev = c.kappa_init, c.r_init

    def observe(self, inp: RewardInput) -> Update:
        if inp.correct is None:
            raise ValueError("DECSCurriculum.observe needs a verified RewardInput (RewardOutput.input)")
        r = nrp_ratios(inp, self.detector)
        seen = ~torch.isnan(r)
        groups = len(set(inp.group_ids.tolist()))
        return float(r[seen].sum()), int(seen.sum()), len(all_correct_groups(inp)), groups

    def apply(self, updates: list[Update]) -> None:
        """One curriculum step from every update of the step; a step without any R_i leaves the state unchanged."""
        r_sum, r_n, easy, groups = (sum(u[i] for u in updates) for i in range(4))
        if r_n == 0 or groups == 0:
            return
        r_now = r_sum / r_n
        self.kappa = update(self.kappa, self.r_prev, r_now, easy / groups, self.lr)
        self.r_prev = r_now

    def state_dict(self) -> dict:
        return {"kappa": self.kappa, "r_prev": self.r_prev}

    def load_state_dict(self, state: dict) -> None:
        self.kappa, self.r_prev = float(state["kappa"]), float(state["r_prev"])
