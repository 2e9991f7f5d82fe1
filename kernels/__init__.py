"""Kernels room: memory-lean log-prob / entropy of sampled tokens from hidden states (torch only).

No ``__version__`` and no distribution named ``kernels`` on purpose: transformers probes for the hub
``kernels`` package and must not mistake this room for it (tests/test_imports.py checks this).
"""
from kernels.logprobs import logprobs_from_hidden, logprobs_from_hidden_reference, resolve_backend

__all__ = ["logprobs_from_hidden", "logprobs_from_hidden_reference", "resolve_backend"]
