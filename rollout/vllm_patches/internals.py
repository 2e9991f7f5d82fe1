"""Reads and calls of vLLM internals that replace nothing: the in-process engine core and model runner, the output
processor's in-flight request states, the drafter's layer-wise reload, the worker's weight reload, shutdown.

Each function here is a private vLLM path named in :data:`rollout.vllm_patches.MANIFEST`; the engine reaches them
only through the :class:`rollout.vllm_patches.Patches` handle that :func:`rollout.vllm_patches.install` returns.
All but :func:`engine_core` and :func:`model_runner` work with the multiprocess engine too.
"""
from __future__ import annotations

from dataclasses import dataclass


def _runner_of(worker):
    return worker.model_runner


def model_runner(llm):
    """The live model runner of the in-process engine's (only) worker."""
    return llm.collective_rpc(_runner_of)[0]


def engine_core(llm):
    """The in-process ``EngineCore`` (``LLM.llm_engine.engine_core`` is its ``InprocClient``)."""
    return llm.llm_engine.engine_core.engine_core


@dataclass(frozen=True)
class InFlight:
    """A request the output processor holds, as far as it has been generated."""

    req_id: str  # the id the caller gave ``LLMEngine.add_request``
    token_ids: list[int]  # tokens generated so far (a copy)
    logprobs: object  # vLLM's ``FlatLogprobs`` of those tokens (None when the request asked for none)


def in_flight(llm_engine, prefix: str) -> list[InFlight]:
    """The unfinished requests whose id starts with ``prefix``, read from ``LLMEngine.output_processor``'s request
    states (nothing is changed)."""
    out = []
    for st in llm_engine.output_processor.request_states.values():
        if st.external_req_id.startswith(prefix):
            out.append(InFlight(st.external_req_id, list(st.detokenizer.output_token_ids),
                                st.logprobs_processor.logprobs if st.logprobs_processor is not None else None))
    return out


def in_flight_ids(llm_engine, prefix: str) -> list[str]:
    """The ids of :func:`in_flight` (read without copying any tokens)."""
    return [st.external_req_id for st in llm_engine.output_processor.request_states.values()
            if st.external_req_id.startswith(prefix)]


def reload_weights(llm, named_tensors) -> None:
    """Push weights (an iterable of (HF name, tensor)) into the live model through the worker's ``reload_weights``
    RPC, then reset the prefix cache (cached blocks hold KV of the old weights and would keep serving it)."""
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named_tensors})
    llm.reset_prefix_cache()


def _swap_drafter(worker, path: str) -> int:
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.model_loader.reload.layerwise import (finalize_layerwise_reload,
                                                                    initialize_layerwise_reload)
    from vllm.model_executor.model_loader.weight_utils import safetensors_weights_iterator

    runner = worker.model_runner
    model = runner.drafter.model
    with set_current_vllm_config(runner.vllm_config):
        initialize_layerwise_reload(model)
        model.load_weights(safetensors_weights_iterator([f"{path}/model.safetensors"], use_tqdm_on_load=False))
        finalize_layerwise_reload(model, runner.vllm_config.speculative_config.draft_model_config)
    return sum(p.numel() for p in model.parameters())


def reload_drafter(llm, folder: str) -> None:
    """Hot-swap the speculator's weights from a checkpoint folder into the live engine (no restart): vLLM's
    layer-wise reload on the drafter module, then a prefix-cache reset (cached blocks hold the old drafter's KV)."""
    llm.collective_rpc(_swap_drafter, args=(folder,))
    llm.reset_prefix_cache()


def shutdown(llm) -> None:
    """Shut the engine core down now (``EngineCoreClient.shutdown``)."""
    llm.llm_engine.engine_core.shutdown()
