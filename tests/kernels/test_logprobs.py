"""The chunked log-prob/entropy kernel against its plain PyTorch twin: values and gradients."""
import pytest
import torch

from kernels import logprobs_from_hidden, logprobs_from_hidden_reference


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_forward_and_backward_match_reference(chunk, temperature):
    g = torch.Generator().manual_seed(chunk)
    h = torch.randn(53, 32, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(301, 32, generator=g)).requires_grad_(True)
    ids = torch.randint(0, 301, (53,), generator=g)
    g_lp, g_ent = torch.randn(53, generator=g), torch.randn(53, generator=g)
    lp, ent = logprobs_from_hidden(h, w, ids, temperature, chunk=chunk)
    lp_r, ent_r = logprobs_from_hidden_reference(h, w, ids, temperature)
    torch.testing.assert_close(lp, lp_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent_r, rtol=1e-5, atol=1e-5)
    gh, gw = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), [h, w])
    gh_r, gw_r = torch.autograd.grad((lp_r * g_lp).sum() + (ent_r * g_ent).sum(), [h, w])
    torch.testing.assert_close(gh, gh_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, gw_r, rtol=1e-4, atol=1e-5)


def test_entropy_of_uniform_is_log_v():
    h = torch.zeros(4, 8)
    lp, ent = logprobs_from_hidden(h, torch.randn(50, 8), torch.tensor([0, 1, 2, 3]))
    assert ent.tolist() == pytest.approx([torch.log(torch.tensor(50.0)).item()] * 4, abs=1e-5)
    assert lp.tolist() == pytest.approx([-torch.log(torch.tensor(50.0)).item()] * 4, abs=1e-5)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="ids"):
        logprobs_from_hidden(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_hidden(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long), 0.0)
