"""Triton-backend checks run in a child process that has ``TRITON_INTERPRET=1`` before ``triton`` is imported.

Why a child: triton 3.9 chooses interpreter or compiler when a function is decorated with ``triton.jit``, and its
own ``tl.max``/``tl.sum`` are decorated at ``import triton``; pytest's process may already hold a compiled-mode
triton (vLLM imports it), so the interpreter cannot be switched on there. ``test_triton_logprobs.py`` runs
``python tests/kernels/triton_interpreter_cases.py``, which prints one JSON object ``{case: null | traceback}``.
Not collected by pytest (no ``test_`` prefix); helpers are shared with the GPU tests.
"""
import json
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels import logprobs_from_hidden, logprobs_from_hidden_reference  # noqa: E402
from kernels.logprobs import TorchRows  # noqa: E402


def make_case(n, v, h, seed, dtype=torch.float32, device="cpu"):
    """-> hidden [n,h], weight [v,h] (requiring grad), ids [n], g_logp [n], g_ent [n]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(device, dtype).requires_grad_(True)
    weight = (0.3 * torch.randn(v, h, generator=g)).to(device, dtype).requires_grad_(True)
    rest = torch.randint(0, v, (n,), generator=g), torch.randn(n, generator=g), torch.randn(n, generator=g)
    return (hidden, weight, *(t.to(device) for t in rest))


def _values_and_grads(fn, hidden, weight, ids, g_lp, g_ent, temperature):
    lp, ent = fn(hidden, weight, ids, temperature)
    gh, gw = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), [hidden, weight])
    return lp, ent, gh, gw


def assert_triton_matches_reference(case, temperature, chunk, grad_tol=(1e-4, 1e-5)):
    """logp, entropy to fp32 tolerance; d hidden, d weight to ``grad_tol`` (rtol, atol relative to the max)."""
    got = _values_and_grads(lambda h, w, i, t: logprobs_from_hidden(h, w, i, t, chunk=chunk, backend="triton"),
                            *case, temperature)
    want = _values_and_grads(logprobs_from_hidden_reference, *case, temperature)
    for name, a, b in zip(["logp", "entropy"], got[:2], want[:2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    rtol, atol = grad_tol
    for name, a, b in zip(["d hidden", "d weight"], got[2:], want[2:]):
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=atol * max(1.0, b.float().abs().max().item()),
                                   msg=lambda m: f"{name}: {m}")


def _row_kernels(vocab):
    from kernels import triton_logprobs

    g = torch.Generator().manual_seed(vocab)
    x = 4 * torch.randn(9, vocab, generator=g)  # [9,V] raw logits
    ids, g_lp, g_ent = torch.randint(0, vocab, (9,), generator=g), torch.randn(9, generator=g), torch.randn(9, generator=g)
    rows, eye, inv_t = TorchRows(9, vocab, torch.float32, torch.device("cpu")), torch.eye(vocab), 1 / 0.7
    ref = rows.stats(x, eye, ids, inv_t)  # x @ eye^T = x: the torch backend's row math on the same logits
    for a, b in zip(triton_logprobs.row_stats(x.clone(), ids, inv_t, block_v=64), ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    g_x = triton_logprobs.row_grad_(x.clone(), ids, ref[2], ref[1], g_lp, g_ent, inv_t, block_v=64)
    torch.testing.assert_close(g_x, rows.grad(x, eye, ids, ref[2], ref[1], g_lp, g_ent, inv_t), rtol=1e-5, atol=1e-6)


def case_row_kernels_one_tile():
    _row_kernels(64)


def case_row_kernels_partial_last_tile():
    _row_kernels(301)


def case_row_kernels_many_tiles():
    _row_kernels(1000)


def case_backend_matches_reference_fp32():
    """Chunks 1, 7, 64 (not dividing 23) x temperatures 1, 0.6; V = 2500 is 3 vocab tiles of 1024."""
    for chunk in (1, 7, 64):
        for temperature in (1.0, 0.6):
            assert_triton_matches_reference(make_case(23, 2500, 32, seed=chunk), temperature, chunk)


def case_single_row():
    assert_triton_matches_reference(make_case(1, 1100, 16, seed=0), 1.0, chunk=4)


def case_bf16_inputs():
    assert_triton_matches_reference(make_case(19, 1100, 32, seed=1, dtype=torch.bfloat16), 0.7, chunk=8,
                                    grad_tol=(2e-2, 2e-2))


def case_hand_checked_three_token_vocab():
    """z = [1, 0, -1], id 0, T = 1 (derivation in test_logprobs.py): logp, H, d(logp + H)/dh."""
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    lp, ent = logprobs_from_hidden(hidden, weight, torch.tensor([0]), 1.0, backend="triton")
    torch.testing.assert_close(torch.stack([lp[0], ent[0]]), torch.tensor([-0.4076060, 0.8323956]), rtol=0, atol=1e-6)
    (gh,) = torch.autograd.grad(lp.sum() + ent.sum(), [hidden])
    torch.testing.assert_close(gh, torch.tensor([[0.4247896 - 0.4244045, 0.0]]), rtol=0, atol=1e-6)


CASES = sorted(name for name in list(globals()) if name.startswith("case_"))


def main() -> None:
    results = {}
    for name in CASES:
        try:
            globals()[name]()
            results[name] = None
        except Exception:  # report every case, not just the first failure
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
