"""Loss aggregation: how per-token losses become one scalar. An explicit choice because it biases length.

``aggregate`` returns this shard's *contribution*: a sum over the shard divided by a denominator counted over the
whole global batch (all ranks, all micro-batches). Summing the contributions of any split therefore gives the
same scalar as aggregating the unsplit batch, whatever the number of ranks.

Modes (m = mask, l = per-token loss, S = sequences in the global batch):
- ``token-mean``:              sum_{i,t} l m / sum_{i,t} m                  (DAPO; each token weighs the same)
- ``seq-mean-token-mean``:     (1/S) sum_i [sum_t l m / sum_t m]            (GRPO paper; short answers weigh more per token)
- ``seq-mean-token-sum``:      (1/S) sum_i sum_t l m
- ``seq-mean-token-sum-norm``: (1/(S*L)) sum_i sum_t l m, L a constant       (Dr.GRPO; no length bias)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from laconic.registry import Registry


@dataclass(frozen=True)
class GlobalCounts:
    tokens: float  # valid tokens in the global batch
    sequences: float  # sequences in the global batch
    norm_length: float  # constant L of seq-mean-token-sum-norm


def _token_mean(l, m, g: GlobalCounts):
    return (l * m).sum() / max(g.tokens, 1.0)


def _seq_mean_token_mean(l, m, g: GlobalCounts):
    per_seq = (l * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    return per_seq.sum() / max(g.sequences, 1.0)


def _seq_mean_token_sum(l, m, g: GlobalCounts):
    return (l * m).sum() / max(g.sequences, 1.0)


def _seq_mean_token_sum_norm(l, m, g: GlobalCounts):
    return (l * m).sum() / (max(g.sequences, 1.0) * g.norm_length)


AGGREGATIONS = Registry("loss aggregation")
AGGREGATIONS.add("token-mean", _token_mean)
AGGREGATIONS.add("seq-mean-token-mean", _seq_mean_token_mean)
AGGREGATIONS.add("seq-mean-token-sum", _seq_mean_token_sum)
AGGREGATIONS.add("seq-mean-token-sum-norm", _seq_mean_token_sum_norm)


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str, global_counts: GlobalCounts) -> torch.Tensor:
    """per_token [B,T], mask [B,T] -> scalar contribution of this shard to the global aggregate."""
    return AGGREGATIONS.get_or_raise(mode, "algo.aggregation")(per_token, mask.to(per_token.dtype), global_counts)


def local_counts(mask: torch.Tensor) -> torch.Tensor:
    """[2] float64 (tokens, sequences with at least one token) of a shard, to be summed over shards into
    :class:`GlobalCounts`. A row whose every token was rejected (sequence-level masked IS) is no sequence."""
    return torch.tensor([float(mask.sum()), float(mask.any(-1).sum())], dtype=torch.float64)
