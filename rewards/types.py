"""What the rewards room consumes and produces. Shapes: B = completions in the batch, T = completion tokens."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class RewardInput:
    completions: list[str]  # [B] decoded completion texts
    num_tokens: torch.Tensor  # [B] long: completion tokens incl. a sampled EOS; = the cap when truncated
    truncated: torch.Tensor  # [B] bool: cut at the completion cap
    group_ids: torch.Tensor  # [B] long: rows sharing a prompt share an id
    meta: list[dict]  # [B] per-row problem data: at least "answer" and "uid"
    token_offsets: list[list[int]] | None = None  # [B][T] char offset where each token starts (token-level terms)
    correct: torch.Tensor | None = None  # [B] bool: verifier verdicts; filled by rewards.compute before any term runs
    max_tokens: int | None = None  # the rollout's completion cap (SamplingSpec.max_tokens); needed by DA-DLER's cap

    def __post_init__(self) -> None:
        b = len(self.completions)
        for name in ("num_tokens", "truncated", "group_ids"):
            t = getattr(self, name)
            if t.shape != (b,):
                raise ValueError(f"RewardInput.{name} has shape {tuple(t.shape)}, expected ({b},)")
        if len(self.meta) != b:
            raise ValueError(f"RewardInput.meta has {len(self.meta)} rows, expected {b}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ValueError(f"RewardInput.max_tokens={self.max_tokens} must be > 0 (or None)")


@dataclass(frozen=True)
class RewardOutput:
    total: torch.Tensor  # [B] float: weighted sum of the sequence-level terms
    correct: torch.Tensor  # [B] bool: verifier verdicts (acc/* metrics)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] float, unweighted
    token_rewards: torch.Tensor | None = None  # [B,T] float: token-level rewards, when a token-level term ran
    input: RewardInput | None = None  # the verified (and transformed, if any ran) input, for state updates
    kept_tokens: torch.Tensor | None = None  # [B] long: tokens of each completion the update may train on, after the
    # rollout transforms (DOT); None when no transform ran. The trainer zeroes completion_mask[i, kept_tokens[i]:].
    errors: torch.Tensor | None = None  # [B] bool: a reward call raised or timed out on this row (it scored 0)
    score: torch.Tensor | None = None  # [B] float: ``total`` before the truncation rule (DLER filters groups on it)


def select_output(out: RewardOutput, rows: torch.Tensor) -> RewardOutput:
    """The given rows (long [R]) of a reward output (token rewards trimmed to ``width`` by the caller)."""
    inp = out.input
    sub_in = None
    if inp is not None:
        sub_in = RewardInput(
            completions=[inp.completions[int(i)] for i in rows], num_tokens=inp.num_tokens[rows],
            truncated=inp.truncated[rows], group_ids=inp.group_ids[rows], meta=[inp.meta[int(i)] for i in rows],
            token_offsets=[inp.token_offsets[int(i)] for i in rows] if inp.token_offsets is not None else None,
            correct=inp.correct[rows] if inp.correct is not None else None, max_tokens=inp.max_tokens)
    return RewardOutput(total=out.total[rows], correct=out.correct[rows],
                        terms={k: v[rows] for k, v in out.terms.items()},
                        token_rewards=out.token_rewards[rows] if out.token_rewards is not None else None, input=sub_in,
                        kept_tokens=out.kept_tokens[rows] if out.kept_tokens is not None else None,
                        errors=out.errors[rows] if out.errors is not None else None,
                        score=out.score[rows] if out.score is not None else None)


def concat_outputs(outs: list[RewardOutput]) -> RewardOutput:
    """Row-wise concatenation (token rewards right-padded with 0)."""
    if len(outs) == 1:
        return outs[0]
    tok = None
    if all(o.token_rewards is not None for o in outs):
        width = max(o.token_rewards.shape[1] for o in outs)
        tok = torch.cat([torch.nn.functional.pad(o.token_rewards, (0, width - o.token_rewards.shape[1])) for o in outs])
    kept = torch.cat([o.kept_tokens for o in outs]) if all(o.kept_tokens is not None for o in outs) else None
    errors = torch.cat([o.errors for o in outs]) if all(o.errors is not None for o in outs) else None
    score = torch.cat([o.score for o in outs]) if all(o.score is not None for o in outs) else None
    return RewardOutput(total=torch.cat([o.total for o in outs]), correct=torch.cat([o.correct for o in outs]),
                        terms={k: torch.cat([o.terms[k] for o in outs]) for k in outs[0].terms}, token_rewards=tok,
                        kept_tokens=kept, errors=errors, score=score)
