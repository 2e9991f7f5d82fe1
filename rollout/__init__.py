"""Rollout room: the colocated vLLM engine (vllm imported lazily inside it) and the batch types it produces."""
from rollout.config import RolloutConfig
from rollout.types import Prompt, RolloutBatch, SamplingSpec, SpecStats

__all__ = ["RolloutConfig", "Prompt", "RolloutBatch", "SamplingSpec", "SpecStats", "VLLMEngine"]


def __getattr__(name: str):
    if name == "VLLMEngine":  # keep `import rollout` free of vllm
        from rollout.vllm_engine import VLLMEngine

        return VLLMEngine
    raise AttributeError(name)
