"""Every per-step metric, defined and reduced here: tensors until one reduction per step; names are ``room/what``.

- :class:`Timers` -> ``time/<phase>_s`` (the phases of :meth:`trainers.rl.Trainer.train_step`);
- :class:`Sums` (the update's per-token and per-optimizer-step sums, :data:`SUM_KEYS`) and the step's rollout rows
  -> ``reward/*``, ``acc/*``, ``len/*``, ``rollout/*``, ``perf/*``, ``train/*``, ``critic/*`` (:func:`step_metrics`);
- the rollout's speculative-decoding counters -> ``spec/*`` (:func:`spec_metrics`);
- the drafter step's training statistics -> ``drafter/*`` (:func:`drafter_metrics`).

Reductions are rank-count invariant: sums are all-reduced first, then normalised by global counts.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

import torch

from drafters.types import DrafterStats
from rollout.types import BatchTime, SpecStats
from trainers.backend import distributed

# per-step sums of the update: per-token statistics are normalised by the global token count, per-optimizer-step
# ones (loss, grad norms) by the number of optimizer steps (and ranks, for grad norms, which every rank reports)
SUM_KEYS = ("loss", "entropy", "clip_frac", "tokens", "kept_tokens", "grad_norm", "sampler_kl", "mismatch_ratio",
            "ref_kl", "vf_loss", "vf_clip_frac", "critic_grad_norm", "nonfinite", "critic_nonfinite")
_INDEX = {k: i for i, k in enumerate(SUM_KEYS)}


class Sums:
    """This rank's sums of :data:`SUM_KEYS` over one step's update, as one float64 tensor [len(SUM_KEYS)]."""

    def __init__(self) -> None:
        self.values = torch.zeros(len(SUM_KEYS), dtype=torch.float64)

    def add(self, key: str, value: float) -> None:
        self.values[_INDEX[key]] += value

    def __getitem__(self, key: str) -> float:
        return float(self.values[_INDEX[key]])


def length_stats(lengths: torch.Tensor, prefix: str) -> dict[str, float]:
    """mean / median / p90 / p99 / max of a [N] tensor of token counts (p99 / median: how long the tail is)."""
    x = lengths.to(torch.float64)
    if x.numel() == 0:
        return {f"{prefix}{k}": 0.0 for k in ("mean", "median", "p90", "p99", "max")}
    q = torch.quantile(x, torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
    return {f"{prefix}mean": float(x.mean()), f"{prefix}median": float(q[0]), f"{prefix}p90": float(q[1]),
            f"{prefix}p99": float(q[2]), f"{prefix}max": float(x.max())}


class Timers:
    """Named wall-clock phases of one step: ``with timers("rollout"): ...`` -> ``time/rollout_s``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0

    def as_metrics(self) -> dict[str, float]:
        return {f"time/{k}_s": v for k, v in self.seconds.items()}


@dataclass(frozen=True)
class StepContext:
    """What the step's reduction needs besides the rollout rows and the update's sums."""

    step: int  # 1-based step number
    epoch: int  # passes over the training prompts so far
    world_size: int
    optimizer_steps: float  # trainer.epochs x trainer.mini_batches
    policy_lr: float
    policy_version: int
    has_reference: bool  # ref_kl is logged
    critic_lr: float | None  # None without a critic


def step_metrics(ctx: StepContext, sample, sums: Sums, timers: Timers) -> tuple[dict, float]:
    """The step's one reduction over ranks -> (metrics, tokens generated this step on every rank).

    ``sample`` is the step's :class:`~trainers.sampling.Sample` (rows this rank trains on, their rewards, the tokens
    it generated, dropped groups included)."""
    batch, rewards = sample.batch, sample.rewards
    rows = torch.stack([batch.num_tokens.to(torch.float64), rewards.total.to(torch.float64),
                        rewards.correct.to(torch.float64), batch.truncated.to(torch.float64)], -1)
    rows = distributed.all_gather_rows(rows)  # [B_global, 4]
    s = dict(zip(SUM_KEYS, distributed.all_sum(sums.values).tolist()))
    prompt_tokens = sum(len(batch.prompts[int(i)].token_ids) for i in batch.prompt_index)
    gen, rollout_s, step_s, processed = distributed.all_sum(torch.tensor(
        [float(sample.generated_tokens), timers.seconds["rollout"], timers.seconds["step"],
         float(prompt_tokens + int(batch.num_tokens.sum()))], dtype=torch.float64)).tolist()
    w, n_opt = ctx.world_size, ctx.optimizer_steps
    tok = max(s["tokens"], 1.0)
    m = {"step": ctx.step, "epoch": ctx.epoch} | timers.as_metrics()
    m |= {"reward/mean": float(rows[:, 1].mean()), "reward/std": float(rows[:, 1].std()),
          "acc/mean": float(rows[:, 2].mean())}
    m |= {f"reward/{k}": float(distributed.all_sum(v.to(torch.float64).sum().reshape(1))[0]) / rows.shape[0]
          for k, v in rewards.terms.items()}
    errors = rewards.errors if rewards.errors is not None else torch.zeros(len(batch.num_tokens), dtype=torch.bool)
    m["reward/errors"] = int(distributed.all_sum(errors.to(torch.float64).sum().reshape(1))[0])  # failed calls
    m |= length_stats(rows[:, 0], "len/")
    m |= {"len/truncated_frac": float(rows[:, 3].mean()), "rollout/tokens_per_s": gen / max(rollout_s / w, 1e-9),
          "rollout/sequences": rows.shape[0], "rollout/tokens": float(rows[:, 0].sum()),
          "rollout/generated_tokens": gen, "perf/tokens_per_s": processed / max(step_s, 1e-9),  # verl: tokens / (step time x ranks)
          "train/loss": s["loss"] / n_opt, "train/entropy": s["entropy"] / tok,
          "train/clip_frac": s["clip_frac"] / tok, "train/grad_norm": s["grad_norm"] / n_opt / w,
          "train/lr": ctx.policy_lr, "policy_version": ctx.policy_version,
          "train/nonfinite": int(max(s["nonfinite"], s["critic_nonfinite"]))}  # skipped optimizer steps (NaN/inf)
    if rewards.kept_tokens is not None:  # a rollout transform (DOT) cut completions: how many, and where
        cut = rewards.kept_tokens < batch.num_tokens
        n_cut, cut_at = distributed.all_sum(torch.tensor([float(cut.sum()), float(rewards.kept_tokens[cut].sum())],
                                                         dtype=torch.float64)).tolist()
        m |= {"rollout/cut_frac": n_cut / rows.shape[0], "rollout/cut_len_mean": cut_at / n_cut if n_cut else 0.0}
    if batch.sampler_logprobs is not None:
        m |= {"train/sampler_kl": s["sampler_kl"] / tok, "train/mismatch_ratio": s["mismatch_ratio"] / tok,
              "train/is_kept_frac": s["kept_tokens"] / tok}
    if ctx.has_reference:
        m["train/ref_kl"] = s["ref_kl"] / tok
    if ctx.critic_lr is not None:
        m |= {"critic/vf_loss": s["vf_loss"] / n_opt, "critic/vf_clip_frac": s["vf_clip_frac"] / tok,
              "critic/grad_norm": s["critic_grad_norm"] / n_opt / w, "critic/lr": ctx.critic_lr}
    return m, gen


def spec_metrics(stats: list[SpecStats]) -> dict:
    """``spec/*`` of one step from every generate call of every rank (vLLM's definitions: the mean acceptance
    length counts the bonus token)."""
    tot = torch.tensor([[s.drafts, s.draft_tokens, s.accepted_tokens, s.handoffs, s.lookup_drafts, s.enabled_frac]
                        for s in stats] or [[0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    summed = distributed.all_sum(torch.cat([tot[:, :5].sum(0), torch.tensor([tot[:, 5].mean(), 1.0],
                                                                             dtype=torch.float64)]))
    drafts, draft_tokens, accepted, handoffs, lookup, enabled, ranks = summed.tolist()
    total = SpecStats(enabled / ranks, int(drafts), int(draft_tokens), int(accepted), int(handoffs))
    return {"spec/enabled_frac": total.enabled_frac, "spec/drafts": drafts, "spec/draft_tokens": draft_tokens,
            "spec/accepted_tokens": accepted, "spec/handoffs": handoffs,
            "spec/mean_accept_len": total.mean_accept_len,
            "spec/acceptance_rate": accepted / draft_tokens if draft_tokens else 0.0,
            # rollout.lookup_blend: the share of rounds whose draft came from the lookup instead of the head
            "spec/lookup_frac": lookup / drafts if drafts else 0.0}


BATCH_SHARES = (8, 32)  # rollout/batch_le{N}_frac: the share of engine-step time with at most N requests


def batch_time_metrics(timing: list[BatchTime]) -> dict:
    """``rollout/engine_s`` (engine-step seconds of the step's generate calls, summed over ranks) and
    ``rollout/batch_le{N}_frac``: the share of them spent with at most N requests in a rank's engine, the long tail's
    share of the rollout. Nothing where no engine has a batch clock (not in-process)."""
    t = sum(timing, BatchTime())
    vals = distributed.all_sum(torch.tensor([t.total(), *(t.at_most(n) for n in BATCH_SHARES)],
                                            dtype=torch.float64)).tolist()
    if vals[0] <= 0:
        return {}
    return {"rollout/engine_s": vals[0]} | {f"rollout/batch_le{n}_frac": v / vals[0]
                                             for n, v in zip(BATCH_SHARES, vals[1:])}


def drafter_metrics(stats: DrafterStats, overhead_s: float, version: int) -> dict:
    """``drafter/*`` of one step on this rank: time spent training, wall time the drafter added to the step
    (training outside idle windows, averaging, export and swap), loss, top-1 agreement, optimizer steps, version."""
    return {"drafter/train_s": stats.train_s, "drafter/overhead_s": overhead_s, "drafter/loss": stats.loss,
            "drafter/top1": stats.top1_agreement, "drafter/steps": stats.steps, "drafter/version": version}
