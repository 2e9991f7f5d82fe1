"""The chunked log-prob/entropy kernel (torch backend) against hand-derived numbers and its plain PyTorch twin."""
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kernels import logprobs_from_hidden, logprobs_from_hidden_reference, resolve_backend

pytestmark = pytest.mark.unit


def _case(n: int, v: int, h: int, seed: int, scale: float = 0.3, dtype=torch.float32):
    """-> hidden [n,h], weight [v,h] (both requiring grad), ids [n], g_logp [n], g_ent [n]."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).requires_grad_(True)
    weight = (scale * torch.randn(v, h, generator=g)).to(dtype).requires_grad_(True)
    return hidden, weight, torch.randint(0, v, (n,), generator=g), torch.randn(n, generator=g), torch.randn(n, generator=g)


def _values_and_grads(fn, hidden, weight, ids, g_lp, g_ent, temperature):
    lp, ent = fn(hidden, weight, ids, temperature)
    gh, gw = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), [hidden, weight])
    return lp, ent, gh, gw


def _torch(chunk):
    return lambda h, w, i, t: logprobs_from_hidden(h, w, i, t, chunk=chunk, backend="torch")


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_values_and_grads_match_reference_fp32(chunk, temperature):
    case = _case(53, 301, 32, seed=chunk)
    got = _values_and_grads(_torch(chunk), *case, temperature)
    want = _values_and_grads(logprobs_from_hidden_reference, *case, temperature)
    for name, a, b in zip(["logp", "entropy", "d hidden", "d weight"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_peaked_rows_large_logits_match_reference():
    """Logits of size ~40 with near-zero entropy: the entropy must not lose digits to cancellation."""
    case = _case(29, 500, 16, seed=3, scale=3.0)
    got = _values_and_grads(_torch(8), *case, 0.8)
    want = _values_and_grads(logprobs_from_hidden_reference, *case, 0.8)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


def test_single_row():
    case = _case(1, 97, 8, seed=1)
    for a, b in zip(_values_and_grads(_torch(4), *case, 1.0),
                    _values_and_grads(logprobs_from_hidden_reference, *case, 1.0)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_inputs_match_reference_on_the_same_bf16_inputs():
    case = _case(41, 333, 32, seed=5, dtype=torch.bfloat16)
    lp, ent, gh, gw = _values_and_grads(_torch(16), *case, 0.7)
    lp_r, ent_r, gh_r, gw_r = _values_and_grads(logprobs_from_hidden_reference, *case, 0.7)
    assert lp.dtype == ent.dtype == torch.float32 and gh.dtype == gw.dtype == torch.bfloat16
    torch.testing.assert_close(lp, lp_r, rtol=1e-4, atol=1e-4)  # same bf16 logits, then fp32 math
    torch.testing.assert_close(ent, ent_r, rtol=1e-4, atol=1e-4)
    for a, b in [(gh, gh_r), (gw, gw_r)]:  # gradients round to bf16 (~0.4% per element) on both sides
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=2e-2 * b.float().abs().max().item())


# z = h W^T / T with h = [1, 0] and W rows [1,0], [0,0], [-1,0]: z = [1, 0, -1] / T, chosen id 0.
# T = 1: sum e^z = e + 1 + 1/e = 4.0861613, lse = 1.4076060, p = [0.6652410, 0.2447285, 0.0900306],
#   logp = 1 - lse = -0.4076060, H = lse - sum p z = 1.4076060 - (0.6652410 - 0.0900306) = 0.8323956.
#   d logp / dh_0 = (1 - p_0) * 1 + (-p_2) * (-1) = 0.3347590 + 0.0900306 = 0.4247896;
#   d logp / dW[:, 0] = (onehot - p) * h_0 = [0.3347590, -0.2447285, -0.0900306];
#   d H / dh_0 = -p_0 (log p_0 + H) + p_2 (log p_2 + H) = -0.6652410 * 0.4247896 + 0.0900306 * (-1.5752104)
#             = -0.2825875 - 0.1418171 = -0.4244045.
# T = 0.5: z = [2, 0, -2], lse = log(e^2 + 1 + e^-2) = 2.1429316, logp = -0.1429316,
#   p = [0.8668133, 0.1173104, 0.0158762], H = lse - 2 (p_0 - p_2) = 0.4410574.
def _tiny():
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    return hidden, weight, torch.tensor([0])


@pytest.mark.parametrize("fn", [_torch(1), logprobs_from_hidden_reference], ids=["chunked", "reference"])
def test_hand_checked_three_token_vocab(fn):
    hidden, weight, ids = _tiny()
    lp, ent = fn(hidden, weight, ids, 0.5)
    assert (lp.item(), ent.item()) == pytest.approx((-0.1429316, 0.4410574), abs=1e-6)
    lp, ent = fn(hidden, weight, ids, 1.0)
    assert (lp.item(), ent.item()) == pytest.approx((-0.4076060, 0.8323956), abs=1e-6)
    gh, gw = torch.autograd.grad(lp.sum(), [hidden, weight], retain_graph=True)
    assert gh[0].tolist() == pytest.approx([0.4247896, 0.0], abs=1e-6)
    assert gw.flatten().tolist() == pytest.approx([0.3347590, 0.0, -0.2447285, 0.0, -0.0900306, 0.0], abs=1e-6)
    gh, _ = torch.autograd.grad(ent.sum(), [hidden, weight])
    assert gh[0].tolist() == pytest.approx([-0.4244045, 0.0], abs=1e-6)


def test_entropy_of_uniform_is_log_v():
    lp, ent = logprobs_from_hidden(torch.zeros(4, 8), torch.randn(50, 8), torch.tensor([0, 1, 2, 3]), chunk=3)
    assert ent.tolist() == pytest.approx([math.log(50)] * 4, abs=1e-5)
    assert lp.tolist() == pytest.approx([-math.log(50)] * 4, abs=1e-5)


def test_one_output_and_frozen_head():
    """Only logp used (entropy's gradient is zero) and the head frozen: d hidden still matches."""
    hidden, weight, ids, _, _ = _case(20, 64, 8, seed=2)
    weight = weight.detach()
    (gh,) = torch.autograd.grad(logprobs_from_hidden(hidden, weight, ids, chunk=6)[0].sum(), [hidden])
    (gh_r,) = torch.autograd.grad(logprobs_from_hidden_reference(hidden, weight, ids)[0].sum(), [hidden])
    torch.testing.assert_close(gh, gh_r, rtol=1e-4, atol=1e-5)


class _LargestTensor(TorchDispatchMode):
    """Records the largest numel of any tensor an aten op returns."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_never_materialises_full_logits():
    n, v, h, chunk = 64, 300, 16, 8
    hidden, weight, ids, g_lp, g_ent = _case(n, v, h, seed=4)
    with _LargestTensor() as probe:
        _values_and_grads(_torch(chunk), hidden, weight, ids, g_lp, g_ent, 1.0)
    assert probe.largest <= max(chunk * v, v * h) < n * v
    with _LargestTensor() as probe:  # the probe does see the reference's [N,V] logits
        _values_and_grads(logprobs_from_hidden_reference, hidden, weight, ids, g_lp, g_ent, 1.0)
    assert probe.largest == n * v


def test_bad_arguments_are_named():
    f, z = torch.zeros, torch.zeros
    with pytest.raises(ValueError, match="ids"):
        logprobs_from_hidden(f(3, 4), f(5, 4), z(2, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        logprobs_from_hidden(f(3, 4), f(5, 3), z(3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_hidden(f(3, 4), f(5, 4), z(3, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="chunk"):
        logprobs_from_hidden(f(3, 4), f(5, 4), z(3, dtype=torch.long), chunk=0)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 5\)"):
        logprobs_from_hidden(f(3, 4), f(5, 4), torch.tensor([0, 5, 1]))
    with pytest.raises(TypeError, match="hidden"):
        logprobs_from_hidden(f(3, 4), f(5, 4, dtype=torch.float64), z(3, dtype=torch.long))
    with pytest.raises(TypeError, match="ids"):
        logprobs_from_hidden(f(3, 4), f(5, 4), z(3))
    with pytest.raises(ValueError, match="backend"):
        logprobs_from_hidden(f(3, 4), f(5, 4), z(3, dtype=torch.long), backend="cuda")


def test_auto_backend_is_torch_on_cpu():
    assert resolve_backend("auto", torch.zeros(1)) == "torch"


def test_triton_backend_on_cpu_without_interpreter_raises(monkeypatch):
    """Asking for triton where it cannot run is an error, never a quiet switch to torch."""
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        logprobs_from_hidden(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long), backend="triton")
