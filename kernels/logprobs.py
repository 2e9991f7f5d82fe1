"""Log-probabilities and entropies of chosen tokens from final hidden states, never holding ``[N, V]`` logits.

Math. Row n with hidden ``h_n``, LM head ``W [V,H]``, temperature ``T``: ``z = W h_n / T``,
``lse = log sum_v exp(z_v)``, ``p = exp(z - lse)``, ``logp_n = z[id_n] - lse``, ``H_n = lse - sum_v p_v z_v``.
For upstream gradients ``g_logp``, ``g_ent`` of the two outputs,

    d logp / dz = onehot(id) - p,        d H / dz = -p * (log p + H)
    dL/dz = g_logp * (onehot(id) - p) - g_ent * p * (log p + H)
    dL/dh = (dL/dz) W / T,               dL/dW = (dL/dz)^T h / T.

Memory. The chunked path walks ``chunk`` rows at a time. Forward keeps only ``lse [N]`` and ``H [N]``; backward
recomputes one chunk's logits (one matmul), turns them into ``dL/dx`` in place (``x = h W^T`` the raw logits, so the
``1/T`` is folded in) and runs the two gradient matmuls. Extra memory is ``O(chunk * V)`` plus the gradients,
instead of the several ``[N,V]`` tensors autograd keeps when it differentiates through full logits.
Time: 4 matmuls instead of autograd's 3, paid back by reusing two chunk buffers (no fresh ``[N,V]`` allocations to
page-fault) and by 4-5 in-place passes per chunk instead of autograd's ~12 over ``[N,V]``.

Backends (``backend=``), each a class doing the per-chunk row work behind one chunk loop:
``"torch"`` (torch ops, any device), ``"triton"`` (matmuls in torch/cuBLAS, each chunk's row reductions and
``dL/dx`` fused into one Triton pass: ``kernels/triton_logprobs.py``), ``"auto"`` (triton on CUDA tensors when the
``triton`` package is installed, else torch). A backend that was asked for and cannot run raises; it never falls back.
"""
from __future__ import annotations

import importlib.util
from typing import Callable

import torch

# rows per chunk when the caller gives none. CPU: measured by benchmarks/logprob_memory.py (N=1024, H=512, fp32,
# V=32k/150k): 64 rows starve the matmuls (up to 1.8x naive time), 256 leaves only 4.4x less memory at 32k, 128 gives
# 5.6-6.4x less memory at ~0.9x the time. CUDA (not measured here): 1024 rows keep the per-chunk GEMM compute-bound,
# as every chunk re-reads the whole [V,H] head from HBM.
DEFAULT_CHUNK = {"cpu": 128, "cuda": 1024}


def logprobs_from_hidden_reference(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor,
                                   temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch twin: hidden [N,H], weight [V,H], ids [N] -> (logprobs [N], entropy [N]), full [N,V] logits."""
    logits = (hidden @ weight.t()).float() / temperature  # [N,V]
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


class TorchRows:
    """Per-chunk row work in torch ops on two reusable fp32 buffers ``z``, ``e`` of shape [rows, V]."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        self.z = torch.empty(rows, vocab, dtype=torch.float32, device=device)  # [rows,V] scaled logits
        self.e = torch.empty(rows, vocab, dtype=torch.float32, device=device)  # [rows,V] exp / grad

    def logits(self, h: torch.Tensor, w: torch.Tensor, inv_t: float) -> torch.Tensor:
        """h [c,H], w [V,H] -> z = h W^T / T [c,V] fp32, written into the ``z`` buffer."""
        z = self.z[:h.shape[0]]
        if h.dtype == torch.float32:
            return torch.addmm(z, h, w.t(), beta=0.0, alpha=inv_t, out=z)
        return z.copy_(h @ w.t()).mul_(inv_t)

    def stats(self, h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, inv_t: float):
        """-> logp [c], entropy [c], lse [c]; with ``u = z - max z``: ``s = sum e^u``, ``H = log s - sum e^u u / s``."""
        z = self.logits(h, w, inv_t)
        m = z.amax(1, keepdim=True)  # [c,1]
        u = z.sub_(m)
        e = torch.exp(u, out=self.e[:h.shape[0]])
        s = e.sum(1)
        t = torch.bmm(e.unsqueeze(1), u.unsqueeze(2)).view(-1)  # sum_v e_v u_v, no [c,V] temporary
        log_s = s.log()
        logp = u.gather(1, ids[:, None]).squeeze(1) - log_s
        return logp, log_s - t / s, m.squeeze(1) + log_s

    def grad(self, h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor,
             g_logp: torch.Tensor, g_ent: torch.Tensor, inv_t: float) -> torch.Tensor:
        """-> dL/dx [c,V] in ``w``'s dtype for raw logits x = h W^T: ``(g_logp (onehot - p) - g_ent p (log p + H)) / T``."""
        logp = self.logits(h, w, inv_t).sub_(lse[:, None])
        p = torch.exp(logp, out=self.e[:h.shape[0]])
        bias = (-(g_ent * ent + g_logp) * inv_t)[:, None]  # [c,1]
        a = torch.addcmul(bias, logp, (-g_ent * inv_t)[:, None], out=logp)  # -(g_logp + g_ent (log p + H)) / T
        g = p.mul_(a).scatter_add_(1, ids[:, None], (g_logp * inv_t)[:, None])
        return g if w.dtype == torch.float32 else g.to(w.dtype)


def _triton_rows() -> type:
    from kernels.triton_logprobs import TritonRows  # imports triton itself, lazily, with a clear error

    return TritonRows


BACKENDS: dict[str, Callable[[], type]] = {"torch": lambda: TorchRows, "triton": _triton_rows}


def resolve_backend(backend: str, hidden: torch.Tensor) -> str:
    """``"auto"`` -> ``"triton"`` on CUDA tensors when the triton package is installed, else ``"torch"``."""
    if backend == "auto":
        return "triton" if hidden.is_cuda and importlib.util.find_spec("triton") is not None else "torch"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
    return backend


def _accumulate_grad_w(g_w: torch.Tensor, g_x: torch.Tensor, h: torch.Tensor) -> None:
    """g_w [V,H] fp32 += g_x^T [V,c] @ h [c,H] (in place when the chunk is fp32)."""
    if g_x.dtype == torch.float32 and h.dtype == torch.float32:
        g_w.addmm_(g_x.t(), h)
    else:
        g_w.add_(g_x.t() @ h)


class _ChunkedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, temperature, chunk, rows_cls):
        n, inv_t = hidden.shape[0], 1.0 / temperature
        rows = rows_cls(min(chunk, n), weight.shape[0], hidden.dtype, hidden.device)
        logp, ent, lse = (torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(3))
        for s in range(0, n, chunk):
            logp[s:s + chunk], ent[s:s + chunk], lse[s:s + chunk] = rows.stats(
                hidden[s:s + chunk], weight, ids[s:s + chunk], inv_t)
        ctx.save_for_backward(hidden, weight, ids, lse, ent)
        ctx.inv_t, ctx.chunk, ctx.rows_cls = inv_t, chunk, rows_cls
        return logp, ent

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_logp, g_ent):
        hidden, weight, ids, lse, ent = ctx.saved_tensors
        n, chunk = hidden.shape[0], ctx.chunk
        g_logp, g_ent = g_logp.float().contiguous(), g_ent.float().contiguous()
        rows = ctx.rows_cls(min(chunk, n), weight.shape[0], hidden.dtype, hidden.device)
        g_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        g_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for s in range(0, n, chunk):
            h, sl = hidden[s:s + chunk], slice(s, s + chunk)
            g_x = rows.grad(h, weight, ids[sl], lse[sl], ent[sl], g_logp[sl], g_ent[sl], ctx.inv_t)  # [c,V]
            if g_h is not None:
                torch.mm(g_x, weight, out=g_h[sl])
            if g_w is not None:
                _accumulate_grad_w(g_w, g_x, h)
        return g_h, (g_w.to(weight.dtype) if g_w is not None else None), None, None, None, None


def default_chunk(device: torch.device) -> int:
    """Rows per chunk for ``device`` when the caller passes ``chunk=None`` (see ``DEFAULT_CHUNK``)."""
    return DEFAULT_CHUNK.get(device.type, DEFAULT_CHUNK["cuda"])


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float,
                  chunk: int) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)} must be [N,H] and [V,H]")
    if ids.shape != hidden.shape[:1]:
        raise ValueError(f"ids {tuple(ids.shape)} must be [{hidden.shape[0]}]")
    if not hidden.is_floating_point() or hidden.dtype != weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one floating dtype")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ids must be int64 or int32, got {ids.dtype}")
    if not hidden.device == weight.device == ids.device:
        raise ValueError(f"hidden, weight, ids must share a device, got {hidden.device}, {weight.device}, {ids.device}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= weight.shape[0]):
        raise ValueError(f"ids must lie in [0, {weight.shape[0]}), got [{int(ids.min())}, {int(ids.max())}]")


def logprobs_from_hidden(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0,
                         chunk: int | None = None, backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """hidden [N,H], weight [V,H], ids [N] -> (logprobs [N] fp32, entropy [N] fp32), ``chunk`` rows at a time.

    Differentiable wrt ``hidden`` and ``weight`` (gradients in their dtype, ``weight``'s accumulated in fp32).
    ``chunk=None`` takes ``default_chunk(hidden.device)``; ``backend`` is "auto", "torch" or "triton".
    """
    chunk = default_chunk(hidden.device) if chunk is None else chunk
    _check_inputs(hidden, weight, ids, temperature, chunk)
    rows_cls = BACKENDS[resolve_backend(backend, hidden)]()
    return _ChunkedLogprobs.apply(hidden.contiguous(), weight.contiguous(), ids.long().contiguous(),
                                  float(temperature), int(chunk), rows_cls)
