"""What the drafters room consumes and produces. Shapes: B = sequences, T = tokens, H = policy hidden size."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DrafterBatch:
    token_ids: torch.Tensor  # [B,T] long: prompt + completion tokens
    hidden_states: torch.Tensor  # [B,T,H] float: the policy's final hidden states from the trainer's forward (detached)
    mask: torch.Tensor  # [B,T] bool: positions to train on


@dataclass(frozen=True)
class DrafterStats:
    loss: float  # mean training loss of the update
    top1_agreement: float  # fraction of positions where the drafter's argmax equals the policy's
    train_s: float  # seconds spent training


@dataclass(frozen=True)
class DrafterExport:
    method: str  # vLLM speculative method: "eagle" | "draft_model"
    num_speculative_tokens: int  # tokens proposed per round
    path: str  # folder in the layout vLLM loads as a speculator
    version: int  # drafter version (increments per update)
