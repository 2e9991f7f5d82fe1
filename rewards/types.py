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

    def __post_init__(self) -> None:
        b = len(self.completions)
        for name in ("num_tokens", "truncated", "group_ids"):
            t = getattr(self, name)
            if t.shape != (b,):
                raise ValueError(f"RewardInput.{name} has shape {tuple(t.shape)}, expected ({b},)")
        if len(self.meta) != b:
            raise ValueError(f"RewardInput.meta has {len(self.meta)} rows, expected {b}")


@dataclass(frozen=True)
class RewardOutput:
    total: torch.Tensor  # [B] float: weighted sum of the sequence-level terms
    correct: torch.Tensor  # [B] bool: verifier verdicts (acc/* metrics)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [B] float, unweighted
    token_rewards: torch.Tensor | None = None  # [B,T] float: token-level rewards, when a token-level term ran
    input: RewardInput | None = None  # the verified input (``correct`` filled), for state updates


def select_output(out: RewardOutput, rows: torch.Tensor) -> RewardOutput:
    """The given rows (long [R]) of a reward output (token rewards trimmed to ``width`` by the caller)."""
    inp = out.input
    sub_in = None
    if inp is not None:
        sub_in = RewardInput(
            completions=[inp.completions[int(i)] for i in rows], num_tokens=inp.num_tokens[rows],
            truncated=inp.truncated[rows], group_ids=inp.group_ids[rows], meta=[inp.meta[int(i)] for i in rows],
            token_offsets=[inp.token_offsets[int(i)] for i in rows] if inp.token_offsets is not None else None,
            correct=inp.correct[rows] if inp.correct is not None else None)
    return RewardOutput(total=out.total[rows], correct=out.correct[rows],
                        terms={k: v[rows] for k, v in out.terms.items()},
                        token_rewards=out.token_rewards[rows] if out.token_rewards is not None else None, input=sub_in)


def concat_outputs(outs: list[RewardOutput]) -> RewardOutput:
    """Row-wise concatenation (token rewards right-padded with 0)."""
    if len(outs) == 1:
        return outs[0]
    tok = None
    if all(o.token_rewards is not None for o in outs):
        width = max(o.token_rewards.shape[1] for o in outs)
        tok = torch.cat([torch.nn.functional.pad(o.token_rewards, (0, width - o.token_rewards.shape[1])) for o in outs])
    return RewardOutput(total=torch.cat([o.total for o in outs]), correct=torch.cat([o.correct for o in outs]),
                        terms={k: torch.cat([o.terms[k] for o in outs]) for k in outs[0].terms}, token_rewards=tok)
