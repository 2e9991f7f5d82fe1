"""Triton row kernels for the chunked log-prob path (``backend="triton"``); ``triton`` is imported on first use.

Choice. Matmuls stay in torch (cuBLAS), one chunk of rows at a time, and Triton fuses only the row-wise work over a
chunk's raw logits ``x = h W^T [c,V]`` (the structure of Liger-Kernel's fused linear cross-entropy). A fully fused
matmul + online-softmax kernel needs a flash-attention-style backward (``dL/dW`` reduces over rows, across
programs); cuBLAS already runs the matmuls at peak, and what fusion saves is the elementwise traffic: forward reads
``x`` once (torch backend: five passes), backward reads ``x`` once and overwrites it with ``dL/dx`` (torch: four
passes over two buffers), so one ``[c,V]`` buffer in the input dtype is all the extra memory.

Forward, one program per row, vocab tiles of ``BLOCK_V``, ``z = x / T``, online (Milakov & Gimelshein, 2018) with
``u = z - m`` relative to the running max ``m`` so the entropy never subtracts two large numbers:

    m' = max(m, max z_tile),  a = e^{m - m'}
    s' = a s + sum e^{z - m'},            r' = a (r + s (m - m')) + sum e^{z - m'} (z - m')
    lse = m + log s,  logp = z[id] - lse,  H = lse - sum p z = log s - r / s

Backward, one program per row: ``p = e^{z - lse}``,
``dL/dx = (g_logp (onehot(id) - p) - g_ent p (z - lse + H)) / T``, written over ``x`` in place.

Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors in Triton's numpy interpreter (tests use that).
Triton 3.9 reads the variable when a function is decorated with ``triton.jit``, and its own ``tl.max``/``tl.sum``
are decorated when ``triton`` is first imported: so it must be set before that import (a process cannot switch
later; ``_build`` raises if the two disagree). Our kernels are decorated at first use, one set per setting.
"""
from __future__ import annotations

import functools
import os

import torch

BLOCK_V = 1024  # vocab tile per loop step; 4 warps keep it in registers


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on (``TRITON_INTERPRET`` truthy, as triton.knobs reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.cache
def _build(interpret: bool):
    """-> (row_stats, row_grad) Triton kernels; ``interpret`` keys the cache (triton.jit reads the env var)."""
    try:
        import triton
        import triton.language as tl
    except ImportError as e:
        raise ImportError(f"backend='triton' needs the triton package, which failed to import: {e}") from e
    lib_interpreted = type(tl.max).__name__ == "InterpretedFunction"
    if lib_interpreted != interpret:
        raise RuntimeError(f"TRITON_INTERPRET is {'on' if interpret else 'off'} now but was "
                           f"{'on' if lib_interpreted else 'off'} when triton was first imported: triton decorates its "
                           "own tl.* functions at import, so set TRITON_INTERPRET before the first `import triton`")

    @triton.jit
    def row_stats(x_ptr, x_stride, ids_ptr, logp_ptr, ent_ptr, lse_ptr, vocab, inv_t, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        m = -1e30  # finite, so s * (m - m') is 0 (not nan) on the first tile
        s = 0.0
        r = 0.0
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < vocab
            z = tl.load(x_row + offs, mask=mask, other=float("-inf")).to(tl.float32) * inv_t
            m_new = tl.maximum(m, tl.max(z, axis=0))
            a = tl.exp(m - m_new)
            u = z - m_new  # -inf where masked
            e = tl.exp(u)  # 0 where masked
            r = a * (r + s * (m - m_new)) + tl.sum(e * tl.where(mask, u, 0.0), axis=0)
            s = a * s + tl.sum(e, axis=0)
            m = m_new
        log_s = tl.log(s)
        z_id = tl.load(x_row + tl.load(ids_ptr + row)).to(tl.float32) * inv_t
        tl.store(logp_ptr + row, z_id - m - log_s)
        tl.store(ent_ptr + row, log_s - r / s)
        tl.store(lse_ptr + row, m + log_s)

    @triton.jit
    def row_grad(x_ptr, x_stride, ids_ptr, lse_ptr, ent_ptr, glogp_ptr, gent_ptr, vocab, inv_t,
                 BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * x_stride
        lse = tl.load(lse_ptr + row)
        ent = tl.load(ent_ptr + row)
        g_logp = tl.load(glogp_ptr + row)
        g_ent = tl.load(gent_ptr + row)
        target = tl.load(ids_ptr + row)
        for start in range(0, vocab, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < vocab
            logp = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32) * inv_t - lse
            p = tl.exp(logp)
            g = -p * (g_logp + g_ent * (logp + ent))
            g = tl.where(offs == target, g + g_logp, g)
            tl.store(x_row + offs, (g * inv_t).to(x_ptr.dtype.element_ty), mask=mask)

    return row_stats, row_grad


def _check_device(device: torch.device) -> None:
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"backend='triton' needs CUDA tensors, got {device} (TRITON_INTERPRET=1 runs Triton's CPU "
                         "interpreter instead; backend='torch' runs anywhere)")


def row_stats(x: torch.Tensor, ids: torch.Tensor, inv_t: float, block_v: int = BLOCK_V):
    """x [c,V] raw logits (row-contiguous), ids [c] int64 -> logp [c], entropy [c], lse [c] (fp32) of z = x / T."""
    _check_device(x.device)
    out = [torch.empty(x.shape[0], dtype=torch.float32, device=x.device) for _ in range(3)]
    kernel = _build(interpreting())[0]
    kernel[(x.shape[0],)](x, x.stride(0), ids, *out, x.shape[1], inv_t, BLOCK=block_v, num_warps=4)
    return tuple(out)


def row_grad_(x: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor, g_logp: torch.Tensor,
              g_ent: torch.Tensor, inv_t: float, block_v: int = BLOCK_V) -> torch.Tensor:
    """Overwrites x [c,V] (raw logits) with dL/dx; lse, ent, g_logp, g_ent [c] fp32 contiguous, ids [c] int64."""
    _check_device(x.device)
    kernel = _build(interpreting())[1]
    kernel[(x.shape[0],)](x, x.stride(0), ids, lse, ent, g_logp, g_ent, x.shape[1], inv_t, BLOCK=block_v,
                          num_warps=4)
    return x


class TritonRows:
    """Per-chunk row work: torch matmul into one reusable [rows,V] buffer (input dtype), then one Triton pass."""

    def __init__(self, rows: int, vocab: int, dtype: torch.dtype, device: torch.device):
        _check_device(device)
        _build(interpreting())  # fail here, before any work, if triton cannot import
        self.x = torch.empty(rows, vocab, dtype=dtype, device=device)  # [rows,V] raw logits, then dL/dx

    def stats(self, h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, inv_t: float):
        """h [c,H], w [V,H], ids [c] -> logp [c], entropy [c], lse [c]."""
        x = torch.mm(h, w.t(), out=self.x[:h.shape[0]])
        return row_stats(x, ids, inv_t)

    def grad(self, h: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor,
             g_logp: torch.Tensor, g_ent: torch.Tensor, inv_t: float) -> torch.Tensor:
        """-> dL/dx [c,V] in the input dtype (see the module docstring)."""
        x = torch.mm(h, w.t(), out=self.x[:h.shape[0]])
        return row_grad_(x, ids, lse, ent, g_logp, g_ent, inv_t)
