"""What the drafters room consumes and produces. Shapes: B = sequences, L = prompt + completion tokens,
H = the policy's hidden size."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DrafterBatch:
    """Sequences the policy just produced, with the features of the trainer's own forward over them (free).

    Position q's hidden state ``h_q`` is the policy's final (post-norm) hidden state after reading token q; it
    defines the policy's next-token distribution ``softmax(W h_q / T)``. The EAGLE head at position p reads
    ``(token_{p+1}, h_p)`` and learns ``h_{p+1}`` (vLLM's pairing: input ids shifted by one, positions unchanged).
    """

    token_ids: torch.Tensor  # [B,L] long: prompt + completion tokens, right-padded
    hidden_states: torch.Tensor  # [B,L,H] float: policy's final hidden state at every position (detached)
    valid: torch.Tensor  # [B,L] bool: real (non-padding) tokens
    target: torch.Tensor  # [B,L] bool: positions q whose h_q (next-token distribution) the drafter learns; the
    # completion region, where vLLM speculates: q in [prompt_len, L - 2]
    aux_hidden: torch.Tensor | None = None  # [B,L,A*H]: EAGLE-3's input, the residual stream after A policy layers

    def __post_init__(self) -> None:
        b, l = self.token_ids.shape
        aux_ok = self.aux_hidden is None or self.aux_hidden.shape[:2] == (b, l)
        if (self.hidden_states.shape[:2] != (b, l) or self.valid.shape != (b, l) or self.target.shape != (b, l)
                or not aux_ok):
            aux = None if self.aux_hidden is None else tuple(self.aux_hidden.shape)
            raise ValueError(f"DrafterBatch shapes disagree: token_ids {tuple(self.token_ids.shape)}, hidden_states "
                             f"{tuple(self.hidden_states.shape)}, valid {tuple(self.valid.shape)}, "
                             f"target {tuple(self.target.shape)}, aux_hidden {aux}")


@dataclass(frozen=True)
class DrafterStats:
    loss: float  # mean training loss of the update (last pass)
    top1_agreement: float  # share of target positions where the drafter's argmax equals the policy's
    train_s: float  # seconds spent training
    steps: int = 0  # optimizer steps taken
    tokens: int = 0  # target positions seen

    def plus(self, other: DrafterStats) -> DrafterStats:
        """Both updates as one: loss and top-1 weighted by steps, the rest summed."""
        steps = self.steps + other.steps
        w = (lambda x, y: (x * self.steps + y * other.steps) / steps) if steps else (lambda x, y: 0.0)
        return DrafterStats(w(self.loss, other.loss), w(self.top1_agreement, other.top1_agreement),
                            self.train_s + other.train_s, steps, self.tokens + other.tokens)


@dataclass(frozen=True)
class DrafterExport:
    method: str  # vLLM speculative method: "eagle" | "eagle3" | "draft_model"
    num_speculative_tokens: int  # tokens proposed per round (the maximum; the engine may use fewer per batch size)
    path: str  # folder in the layout vLLM loads as a speculator
    version: int  # drafter version (increments per update)
