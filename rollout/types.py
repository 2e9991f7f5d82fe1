"""What the rollout room produces. Shapes: B = completions (prompts x n), T = longest completion in the batch."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Prompt:
    uid: str  # stable problem id (reward state such as HAPO history is keyed by it)
    token_ids: list[int]  # prompt tokens exactly as the policy sees them
    meta: dict = field(default_factory=dict)  # problem data for rewards, e.g. {"answer": "42"}


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1  # completions per prompt
    max_tokens: int = 512  # completion cap
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass
    seed: int = 0  # base seed; completion j of prompt i uses a seed derived from (seed, i, j)


@dataclass(frozen=True)
class SpecStats:
    """Speculative-decoding counters for one generate call, with vLLM's definitions.

    ``mean_accept_len = 1 + accepted_tokens / drafts`` counts the bonus token; all zero when speculation is off.
    """

    enabled_frac: float = 0.0  # fraction of decoding steps that speculated
    drafts: int = 0  # speculation rounds
    draft_tokens: int = 0  # tokens proposed by the drafter
    accepted_tokens: int = 0  # proposed tokens the target accepted
    handoffs: int = 0  # completions handed over from the drafter-less body to speculation (see VLLMEngine.generate)
    lookup_drafts: int = 0  # rounds whose draft came from the lookup instead of the head (rollout.lookup_blend)

    @property
    def mean_accept_len(self) -> float:
        return 1.0 + self.accepted_tokens / self.drafts if self.drafts else 0.0


@dataclass(frozen=True)
class BatchTime:
    """Engine-step seconds of one generate call, by how many requests the engine held when each step began
    (``rollout.vllm_patches.metering.BatchClock``); empty where the engine is not in-process."""

    seconds: dict[int, float] = field(default_factory=dict)

    def total(self) -> float:
        return sum(self.seconds.values())

    def at_most(self, n: int) -> float:
        """Seconds of steps with at most ``n`` requests in the engine."""
        return sum(s for b, s in self.seconds.items() if b <= n)

    def __add__(self, other: "BatchTime") -> "BatchTime":
        out = dict(self.seconds)
        for b, s in other.seconds.items():
            out[b] = out.get(b, 0.0) + s
        return BatchTime(out)


@dataclass(frozen=True)
class RolloutBatch:
    prompts: list[Prompt]  # [P] the prompts, in order; row b belongs to prompts[prompt_index[b]]
    prompt_index: torch.Tensor  # [B] long: index into ``prompts``
    group_ids: torch.Tensor  # [B] long: rows of the same prompt share an id (= prompt_index here)
    completion_ids: torch.Tensor  # [B,T] long: sampled tokens (EOS included when sampled), right-padded with pad_id
    completion_mask: torch.Tensor  # [B,T] bool: True on sampled tokens
    sampler_logprobs: torch.Tensor | None  # [B,T] float32: sampler's log-prob of each sampled token (0 on padding)
    truncated: torch.Tensor  # [B] bool: stopped by the completion cap
    texts: list[str]  # [B] decoded completions
    policy_version: int  # version of the weights that sampled this batch
    spec: SpecStats = field(default_factory=SpecStats)  # speculative-decoding counters of this call
    timing: BatchTime = field(default_factory=BatchTime)  # engine-step seconds by batch size of this call

    @property
    def num_tokens(self) -> torch.Tensor:  # [B] long
        return self.completion_mask.sum(-1)

    @property
    def meta(self) -> list[dict]:  # [B]
        return [self.prompts[int(i)].meta | {"uid": self.prompts[int(i)].uid} for i in self.prompt_index]


def concat_batches(batches: list[RolloutBatch]) -> RolloutBatch:
    """Rows of several batches (same policy version) as one; prompts are renumbered, padding widened."""
    if len(batches) == 1:
        return batches[0]
    width = max(b.completion_ids.shape[1] for b in batches)

    def pad(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    prompts, index, offset = [], [], 0
    for b in batches:
        prompts += b.prompts
        index.append(b.prompt_index + offset)
        offset += len(b.prompts)
    pad_id = 0  # padding is masked out everywhere it is read
    lps = [b.sampler_logprobs for b in batches]
    prompt_index = torch.cat(index)
    return RolloutBatch(
        prompts=prompts, prompt_index=prompt_index, group_ids=prompt_index.clone(),
        completion_ids=torch.cat([pad(b.completion_ids, pad_id) for b in batches]),
        completion_mask=torch.cat([pad(b.completion_mask, False) for b in batches]),
        sampler_logprobs=torch.cat([pad(x, 0.0) for x in lps]) if all(x is not None for x in lps) else None,
        truncated=torch.cat([b.truncated for b in batches]), texts=[t for b in batches for t in b.texts],
        policy_version=batches[0].policy_version, spec=batches[0].spec, timing=batches[0].timing)


def select_rows(batch: RolloutBatch, rows: torch.Tensor) -> RolloutBatch:
    """The given rows (long [R]) of a batch, trimmed to their longest completion."""
    mask = batch.completion_mask[rows]
    width = max(1, int(mask.sum(-1).max())) if len(rows) else 1
    lps = batch.sampler_logprobs
    return RolloutBatch(
        prompts=batch.prompts, prompt_index=batch.prompt_index[rows], group_ids=batch.group_ids[rows],
        completion_ids=batch.completion_ids[rows, :width], completion_mask=mask[:, :width],
        sampler_logprobs=lps[rows, :width] if lps is not None else None, truncated=batch.truncated[rows],
        texts=[batch.texts[int(i)] for i in rows], policy_version=batch.policy_version, spec=batch.spec,
        timing=batch.timing)
