"""Held-out evaluation with the colocated engine: pass@1 at ``eval.temperature`` and the length distribution.

Each rank generates for its strided share of the held-out prompts; per-problem seeds come from the problem's
uid, so the numbers do not depend on the number of ranks and before/after evaluations are paired.
"""
from __future__ import annotations

import torch

from rewards.registry import verify
from rewards.types import RewardInput
from rollout.types import Prompt, SamplingSpec
from trainers.backend import distributed
from trainers.config import Config
from trainers.metrics import length_stats


def evaluate(engine, prompts: list[Prompt], cfg: Config, rank: int, world_size: int,
             samples: list[dict] | None = None) -> dict[str, float]:
    """-> eval/* metrics over all ranks' shares; with ``samples`` (a list) the first few completions of this rank
    are appended to it (prompt, completion, answer, verdict, tokens) for the W&B table."""
    e = cfg.eval
    spec = SamplingSpec(n=e.samples, max_tokens=e.max_tokens or cfg.rollout.max_tokens, temperature=e.temperature,
                        top_p=e.top_p, seed=e.seed)
    shard = prompts[rank::world_size]
    rows: list[tuple[int, bool, bool, int | None]] = []
    if shard:
        with engine.controller_paused():  # evaluation traffic must not retune training's speculation
            batch = engine.generate(shard, spec)
        inp = RewardInput(completions=batch.texts, num_tokens=batch.num_tokens, truncated=batch.truncated,
                          group_ids=batch.group_ids, meta=batch.meta)
        ok, _ = verify(inp, cfg.reward.correctness.verifier, cfg.reward.timeout_s)  # failed call = incorrect
        targets = [m.get("target_tokens") for m in batch.meta]
        rows = list(zip(batch.num_tokens.tolist(), ok.tolist(), batch.truncated.tolist(), targets))
        if samples is not None:
            samples += sample_rows(engine.tokenizer, batch, ok)
    allrows = [r for part in distributed.gather_objects(rows) for r in part]
    return eval_metrics(allrows)


def sample_rows(tokenizer, batch, ok: torch.Tensor, k: int = 4) -> list[dict]:
    """The first ``k`` completions of a batch as readable rows."""
    out = []
    for b in range(min(k, len(batch.texts))):
        p = batch.prompts[int(batch.prompt_index[b])]
        out.append({"uid": p.uid, "prompt": tokenizer.decode(p.token_ids), "completion": batch.texts[b],
                    "answer": str(p.meta.get("answer")), "correct": bool(ok[b]), "tokens": int(batch.num_tokens[b])})
    return out


def eval_metrics(rows: list[tuple]) -> dict[str, float]:
    """rows of (tokens, correct, truncated[, target N or None]) -> eval/* metrics; with LCPO targets also the
    length adherence ``eval/target_err`` = mean |n - N| / N, ``eval/target_over`` = share with n > N, and the same
    per target as ``eval/target_err@N``, ``eval/len_mean@N``, ``eval/acc@N``."""
    lengths = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    correct = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    trunc = torch.tensor([r[2] for r in rows], dtype=torch.float64)
    n_correct = float(correct.sum())
    out = {"eval/acc": float(correct.mean()) if rows else 0.0, "eval/n": float(len(rows))}
    out |= length_stats(lengths, "eval/len_")
    out["eval/truncated_frac"] = float(trunc.mean()) if rows else 0.0
    out["eval/tokens_per_correct"] = float(lengths.sum()) / n_correct if n_correct else float("inf")
    targeted = [r for r in rows if len(r) > 3 and r[3] is not None]
    if targeted:
        out |= _adherence(targeted, "")
        for n in sorted({r[3] for r in targeted}):
            out |= _adherence([r for r in targeted if r[3] == n], f"@{n}")
    return out


def _adherence(rows: list[tuple], suffix: str) -> dict[str, float]:
    n = torch.tensor([r[0] for r in rows], dtype=torch.float64)
    target = torch.tensor([r[3] for r in rows], dtype=torch.float64)
    return {f"eval/target_err{suffix}": float(((n - target).abs() / target).mean()),
            f"eval/target_over{suffix}": float((n > target).to(torch.float64).mean()),
            f"eval/len_mean{suffix}": float(n.mean()),
            f"eval/acc{suffix}": float(torch.tensor([float(r[1]) for r in rows]).mean())}
