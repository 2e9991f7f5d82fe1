"""Every private vLLM symbol :mod:`rollout.vllm_patches` touches, what it does to it, and which patch does it.

``symbol`` must resolve by import + getattr in the installed vLLM (``rollout.vllm_patches.resolve``); ``attrs`` are
the instance attributes / fields the patch reads or writes on objects of that class (checked by
``rollout.vllm_patches.missing_attrs``). Both are checked by tests/rollout/test_vllm_patches.py, and the symbols of
the patches an engine needs again by ``install()`` at engine start. Public vLLM API (``LLM``, ``SamplingParams``,
``LLMEngine.add_request / step / abort_request``) is not listed.

Actions: "replaced" (our function or method takes its place), "wrapped" (ours runs around vLLM's, which it calls),
"rewritten" (an attribute's value is replaced every step), "called", "read", "mirrored" (not touched: our code
reproduces what it does, and relies on it being so).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Touch:
    symbol: str  # dotted path of the private vLLM symbol (a module attribute, class, method or operator)
    patch: str  # which patch: expand | coupled | gate | clock | meter | lookup | blend | handoff | reload | engine
    action: str  # what is done to it (see the module docstring)
    attrs: tuple[str, ...] = ()  # instance attributes / fields read or written on objects of that class
    cpu_only: bool = False  # exists on vLLM-CPU builds only (checked only there)


_RS = "vllm.v1.sample.rejection_sampler"
_RUNNER = "vllm.v1.worker.gpu_model_runner.GPUModelRunner"  # vLLM-CPU's CPUModelRunner subclasses it
_PROPOSER = "vllm.v1.spec_decode.llm_base_proposer.SpecDecodeBaseProposer"  # EagleProposer, DraftModelProposer

MANIFEST: tuple[Touch, ...] = (
    # expand: the lossless guard (vllm-project/vllm#55005)
    Touch(f"{_RS}.expand_batch_to_tokens", "expand", "probed with known inputs at engine start; replaced (module "
          "attribute, process-wide) by expand_reference on a version known to carry the bug when the probe fails"),
    Touch(f"{_RS}.expand_kernel", "expand", "mirrored: the Triton kernel whose CPU fallback writes nothing; bypassed "
          "by the replacement above"),
    # coupled: coupled speculative sampling
    Touch(f"{_RS}.RejectionSampler.forward", "coupled", "replaced on the runner's instance by CoupledSampling.forward "
          "(vLLM's kept for all-greedy steps)",
          ("sampler", "is_processed_logprobs_mode", "use_fp64_gumbel", "synthetic_mode")),
    Touch(f"{_RS}.RejectionSampler.apply_logits_processors", "coupled", "called on the draft positions' logits"),
    Touch(f"{_RS}.RejectionSampler._get_logprobs_tensors", "coupled", "called when a request asks for top-n logprobs"),
    Touch(f"{_RS}.apply_sampling_constraints", "coupled", "called on the draft positions' logits"),
    Touch(f"{_RS}.PLACEHOLDER_TOKEN_ID", "coupled", "read: fills rejected positions"),
    Touch("vllm.v1.sample.sampler._SAMPLING_EPS", "coupled", "read: the temperature below which a request is greedy"),
    Touch("vllm.v1.sample.sampler.Sampler.forward", "coupled", "called (predict_bonus_token, logprobs_mode_override="
          "processed_logits) for the bonus positions' processed logits"),
    Touch("vllm.v1.sample.ops.topk_topp_sampler.TopKTopPSampler.forward_cpu", "coupled", "mirrored: one "
          "torch.randint(0, 2**31) seed per token from the request's generator, then fused_gumbel_argmax"),
    Touch("torch.ops._C.fused_gumbel_argmax", "coupled", "called: vLLM-CPU's Gumbel-max sampling op", cpu_only=True),
    Touch("vllm.v1.sample.metadata.SamplingMetadata", "coupled", "read; dataclasses.replace(max_num_logprobs=-1, "
          "generators={}) for the bonus positions", (
              "all_greedy", "all_random", "temperature", "generators", "max_num_logprobs", "no_penalties",
              "bad_words_token_ids", "allowed_token_ids_mask", "top_k", "top_p", "thinking_budget_state_holder",
              "logitsprocs")),
    Touch("vllm.v1.sample.logits_processor.state.LogitsProcessors", "coupled", "read: every processor of the batch",
          ("all",)),
    Touch("vllm.v1.sample.logits_processor.builtin.MinPLogitsProcessor", "coupled", "read: idle check",
          ("min_p_count",)),
    Touch("vllm.v1.sample.logits_processor.builtin.LogitBiasLogitsProcessor", "coupled", "read: idle check",
          ("biases",)),
    Touch("vllm.v1.sample.logits_processor.builtin.MinTokensLogitsProcessor", "coupled", "read: idle check",
          ("min_toks",)),
    Touch("vllm.v1.sample.thinking_budget_state.ThinkingBudgetStateHolder", "coupled", "called: idle check",
          ("has_tracked_requests",)),
    Touch("vllm.v1.spec_decode.metadata.SpecDecodeMetadata", "coupled", "read", (
        "num_draft_tokens", "cu_num_draft_tokens", "draft_token_ids", "target_logits_indices",
        "bonus_logits_indices", "max_spec_len")),
    Touch("vllm.v1.outputs.SamplerOutput", "coupled", "built as the verification's result",
          ("sampled_token_ids", "logprobs_tensors")),
    Touch("vllm.v1.outputs.LogprobsTensors", "coupled", "built (sampled tokens' logprobs); read", ("logprobs",)),
    Touch(f"{_PROPOSER}.propose", "coupled", "wrapped on the runner's drafter instance: starts a round's draft seeds",
          ("model", "num_speculative_tokens")),
    Touch(f"{_PROPOSER}._sample_draft_tokens", "coupled", "replaced on the runner's drafter instance by "
          "CoupledSampling.sample_draft_tokens"),
    Touch(f"{_PROPOSER}._greedy_sample", "coupled", "called for all-greedy draft steps"),
    Touch(f"{_RUNNER}._update_states", "coupled", "wrapped on the runner instance: a hand-off continuation's "
          "generator skips the draws its original made", ("rejection_sampler", "drafter", "requests", "device")),
    Touch("vllm.v1.worker.gpu_input_batch.CachedRequestState", "coupled", "read (runner.requests values)",
          ("generator",)),
    Touch("vllm.v1.core.sched.output.NewRequestData", "coupled", "read", ("req_id", "sampling_params")),
    # gate: the drafter gate
    Touch(f"{_RUNNER}.propose_draft_token_ids", "gate", "replaced on the runner instance by DrafterGate.propose "
          "(vLLM's called whenever the step proposes tokens or keeps the drafter's KV)", (
              "input_batch", "device", "drafter", "requests", "discard_request_mask",
              "valid_sampled_token_count_event", "_draft_probs", "_draft_prob_req_ids")),
    Touch(f"{_RUNNER}._copy_valid_sampled_token_count", "gate", "called on a skipped step (GPU bookkeeping)"),
    Touch(f"{_PROPOSER}.prepare_next_token_ids_padded", "gate", "called on a skipped step (GPU bookkeeping)"),
    # clock: the batch clock (every in-process engine)
    Touch("vllm.v1.engine.core_client.InprocClient", "clock", "read: the in-process EngineCore", ("engine_core",)),
    Touch("vllm.v1.engine.core.EngineCore", "clock", "step_fn (an instance attribute) wrapped by BatchClock.step",
          ("step_fn", "scheduler")),
    Touch("vllm.v1.core.sched.scheduler.Scheduler", "clock", "read", ("running", "waiting")),
    # meter: the step meter
    Touch("vllm.v1.engine.core_client.InprocClient", "meter", "read: the in-process EngineCore", ("engine_core",)),
    Touch("vllm.v1.engine.core.EngineCore", "meter", "step_fn (an instance attribute) wrapped by StepMeter.step",
          ("step_fn", "scheduler")),
    Touch("vllm.v1.core.sched.scheduler.Scheduler.schedule", "meter", "wrapped on the engine's scheduler instance by "
          "StepMeter.schedule"),
    Touch("vllm.v1.core.sched.scheduler.Scheduler", "meter", "dynamic_sd_lookup rewritten before every step with "
          "the controller's K; running / waiting read", ("dynamic_sd_lookup", "running", "waiting")),
    Touch("vllm.v1.core.sched.output.SchedulerOutput", "meter", "read",
          ("num_scheduled_tokens", "scheduled_new_reqs", "num_spec_tokens_to_schedule")),
    Touch("vllm.v1.engine.EngineCoreOutputs", "meter", "read", ("scheduler_stats",)),
    Touch("vllm.v1.metrics.stats.SchedulerStats", "meter", "read", ("spec_decoding_stats",)),
    Touch("vllm.v1.spec_decode.metrics.SpecDecodingStats", "meter", "read", (
        "num_drafts", "num_draft_tokens", "num_accepted_tokens", "num_accepted_tokens_per_pos",
        "num_draft_tokens_per_pos")),
    Touch("vllm.v1.worker.gpu_worker.Worker", "meter", "read through LLM.collective_rpc: the live model runner",
          ("model_runner",)),
    # lookup: drafts that need no trained head (rollout.lookup.LookupProposer, vLLM's custom_class method)
    Touch("vllm.v1.spec_decode.custom_class_proposer.create_custom_proposer", "lookup", "mirrored: builds the "
          "proposer as cls(vllm_config); the runner calls its propose(sampled_token_ids, num_tokens_no_spec, "
          "token_ids_cpu, slot_mappings=...) on every step that drafts"),
    Touch(_RUNNER, "lookup", "read: the live input batch; LookupProposer.bind(runner)", ("input_batch", "drafter")),
    Touch("vllm.v1.worker.gpu_input_batch.InputBatch", "lookup", "read: the rows' request ids and prompt lengths",
          ("req_ids", "num_prompt_tokens")),
    # blend: lookup drafts beside a trained head (rollout.vllm_patches.blend.LookupBlend, inside the drafter gate)
    Touch(_RUNNER, "blend", "read: the rows, their requests and the head's draft probabilities; the replaced rows' "
          "probabilities written one-hot", ("input_batch", "requests", "discard_request_mask", "_draft_probs")),
    Touch("vllm.v1.worker.gpu_input_batch.InputBatch", "blend", "read: the rows' request ids and tokens so far",
          ("req_ids", "num_prompt_tokens", "token_ids_cpu", "num_tokens_no_spec")),
    Touch("vllm.v1.worker.gpu_input_batch.CachedRequestState", "blend", "read: a hand-off continuation's "
          "extra_args", ("sampling_params",)),
    Touch(f"{_RUNNER}._bookkeeping_sync", "blend", "mirrored: writes the step's sampled tokens to token_ids_cpu / "
          "num_tokens_no_spec after a head's proposal ran (LookupBlend adds them itself)"),
    # handoff: in-flight request states
    Touch("vllm.v1.engine.llm_engine.LLMEngine", "handoff", "read", ("output_processor", "engine_core")),
    Touch("vllm.v1.engine.output_processor.OutputProcessor", "handoff", "read: in-flight requests",
          ("request_states",)),
    Touch("vllm.v1.engine.output_processor.RequestState", "handoff", "read",
          ("external_req_id", "detokenizer", "logprobs_processor")),
    Touch("vllm.v1.engine.detokenizer.IncrementalDetokenizer", "handoff", "read: tokens so far",
          ("output_token_ids",)),
    Touch("vllm.v1.engine.logprobs.LogprobsProcessor", "handoff", "read: logprobs so far", ("logprobs",)),
    # reload: drafter hot swap
    Touch("vllm.model_executor.model_loader.reload.layerwise.initialize_layerwise_reload", "reload",
          "called on the drafter module"),
    Touch("vllm.model_executor.model_loader.reload.layerwise.finalize_layerwise_reload", "reload",
          "called on the drafter module"),
    Touch("vllm.model_executor.model_loader.weight_utils.safetensors_weights_iterator", "reload", "called"),
    Touch("vllm.config.set_current_vllm_config", "reload", "called (context manager around the reload)"),
    Touch("vllm.config.SpeculativeConfig", "reload", "read", ("draft_model_config",)),
    Touch(_RUNNER, "reload", "read", ("drafter", "vllm_config")),
    Touch(_PROPOSER, "reload", "read: the drafter module", ("model",)),
    # engine: every engine
    Touch("vllm.v1.worker.gpu_worker.Worker.reload_weights", "engine", "called through LLM.collective_rpc (policy "
          "weights)"),
    Touch("vllm.v1.engine.core_client.EngineCoreClient.shutdown", "engine", "called by VLLMEngine.close"),
)
