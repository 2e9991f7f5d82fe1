"""Log-probabilities and entropies of chosen tokens from final hidden states, never holding ``[N, V]`` logits.

For row n with hidden ``h_n`` and LM head ``W [V, H]``: ``z = W h_n / T``, ``lse = logsumexp(z)``,
``logp_n = z[id_n] - lse``, ``H_n = lse - sum_v p_v z_v``. The chunked version walks ``chunk`` rows at a time
and recomputes each chunk's logits in backward, using

    d logp / dz = onehot(id) - p,        d H / dz = -p * (log p + H)

so peak memory is ``O(chunk * V)`` instead of ``O(N * V)`` in forward and backward alike.
"""
from __future__ import annotations

import torch


def logprobs_from_hidden_reference(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch twin: hidden [N,H], weight [V,H], ids [N] -> (logprobs [N], entropy [N])."""
    logits = (hidden @ weight.t()).float() / temperature  # [N,V]
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def _chunk_stats(h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, t: float):
    z = (h @ w.t()).float() / t  # [c,V]
    logp_all = torch.log_softmax(z, dim=-1)
    p = logp_all.exp()
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    ent = -(p * logp_all).sum(-1)
    return logp_all, p, logp, ent


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature, chunk):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device)
        with torch.no_grad():
            for s in range(0, n, chunk):
                _, _, logp[s:s + chunk], ent[s:s + chunk] = _chunk_stats(hidden[s:s + chunk], weight,
                                                                        ids[s:s + chunk], temperature)
        ctx.save_for_backward(hidden, weight, ids, ent)
        ctx.temperature, ctx.chunk = temperature, chunk
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, ids, ent = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        g_h = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        g_w = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], chunk):
            h, i = hidden[s:s + chunk], ids[s:s + chunk]
            logp_all, p, _, _ = _chunk_stats(h, weight, i, t)
            g_z = -p * (logp_all + ent[s:s + chunk, None]) * g_ent[s:s + chunk, None]
            g_z -= p * g_logp[s:s + chunk, None]
            g_z.scatter_add_(-1, i.unsqueeze(-1), g_logp[s:s + chunk, None])
            g_z /= t
            if g_h is not None:
                g_h[s:s + chunk] = (g_z.to(weight.dtype) @ weight).to(hidden.dtype)
            if g_w is not None:
                g_w += g_z.t() @ h.float()
        return g_h, (g_w.to(weight.dtype) if g_w is not None else None), None, None, None


def logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                         temperature: float = 1.0, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N,H], weight [V,H], ids [N] long -> (logprobs [N] fp32, entropy [N] fp32), chunked over N."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be [N,H] and [V,H]")
    if ids.shape != hidden.shape[:1]:
        raise ValueError(f"ids {tuple(ids.shape)} must be [{hidden.shape[0]}]")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _ChunkedLogprobs.apply(hidden, weight, ids, float(temperature), int(chunk))
