"""The drafter gate and the step meter: how the speculation controller's choices reach vLLM, and its data comes back.

Both work only with the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): they hold the live scheduler,
engine core and model runner. Only installed through :func:`rollout.vllm_patches.install`.
"""
from __future__ import annotations

import time

import torch

from rollout.controller import SpecController


class DrafterGate:
    """Skips the drafter entirely on steps that propose no tokens (K = 0) while :attr:`skip` is set (the step meter
    sets it when K = 0 is the controller's choice for the batch, i.e. in a rollout's body, and for requests whose
    drafter KV already has holes; an exploration of K = 0 where the controller speculates still runs the drafter, so
    the requests' drafter KV stays complete and speculation resumes at full acceptance).

    Why: vLLM runs the drafter's forward on every step of a speculating engine, also when the step proposes nothing
    (the EAGLE head keeps its own KV cache filled). On a K = 0 step that forward is pure cost (an engine with a
    drafter and K forced to 0 decodes at 0.71-0.79x the speed of one without), which made the large-batch body of a
    rollout slower than without speculation. Gated, a K = 0 step costs what a plain step costs; the drafter's KV for
    the skipped positions is left unwritten, which is why :meth:`rollout.vllm_engine.VLLMEngine.generate` hands the
    requests still running when speculation turns on over to fresh requests (a re-prefill of prompt + partial
    completion writes it), and why the step meter does not speculate on requests it has not handed over (see
    :class:`StepMeter`). Acceptance is all a stale drafter KV could cost: verification keeps sampling lossless.

    A K = 0 step that does run the drafter times it (:attr:`kv_only_s`) and the step meter records the step without
    it: the controller's K = 0 samples come from such exploration steps wherever it speculates, and with the
    drafter's forward in them K = 0 would look slower than it is when chosen, so the controller would over-rate
    speculation (the forward is 1.0 ms of a 6.2 ms batch-4 step). On GPU the timer sees only the launches; there the
    correction is a lower bound.

    A lookup drafter (:class:`rollout.lookup.LookupProposer`, :attr:`stateless`) has no KV: every K = 0 step skips
    it, nothing goes stale, and a drafting step hands it the step's K. Beside a trained head, lookup drafts replace
    the head's per request through :attr:`blend` (:class:`rollout.vllm_patches.blend.LookupBlend`), called on every
    step.

    :meth:`install` replaces ``GPUModelRunner.propose_draft_token_ids`` on this runner instance with :meth:`propose`."""

    def __init__(self, runner) -> None:
        self.runner = runner
        # a drafter without KV of its own (lookup drafts): nothing to keep complete, so every K = 0 step skips it
        self.stateless = bool(getattr(runner.drafter, "stateless", False))
        self._stock_propose = runner.propose_draft_token_ids
        self.skip = False  # skip the drafter on K = 0 steps (set by the step meter before each step is scheduled)
        self.kv_only_s = 0.0  # seconds of drafter forwards on this step that proposed nothing (K = 0)
        self.blend = None  # LookupBlend: per request, lookup drafts in place of the head's (rollout.lookup_blend)

    def install(self) -> "DrafterGate":
        self.runner.propose_draft_token_ids = self.propose
        return self

    def propose(self, scheduler_output, sampled_token_ids, *args, **kwargs):
        """``GPUModelRunner.propose_draft_token_ids``, or no drafter forward at all on a K = 0 step while gated."""
        runner = self.runner
        k = scheduler_output.num_spec_tokens_to_schedule
        if k > 0:
            if self.stateless:  # vLLM's custom_class call does not pass the step's K
                runner.drafter.step_k = k
            out = self._stock_propose(scheduler_output, sampled_token_ids, *args, **kwargs)
            return out if self.blend is None else self.blend(sampled_token_ids, out)
        if self.stateless:
            runner._draft_probs = runner._draft_prob_req_ids = None
            return [[] for _ in range(runner.input_batch.num_reqs)]
        if self.blend is not None:  # no drafts: credit the ones this step verified, keep the lookup's text current
            self.blend(sampled_token_ids, None)
        if not self.skip:  # K = 0, drafter run only to keep its KV complete: timed for the meter
            t0 = time.perf_counter()
            out = self._stock_propose(scheduler_output, sampled_token_ids, *args, **kwargs)
            self.kv_only_s += time.perf_counter() - t0
            return out
        runner._draft_probs = runner._draft_prob_req_ids = None
        if getattr(runner, "valid_sampled_token_count_event", None) is not None and torch.is_tensor(sampled_token_ids):
            # what vLLM's own no-draft path does on GPU (padded batch): keep the sampled-count bookkeeping going
            next_ids, counts = runner.drafter.prepare_next_token_ids_padded(
                sampled_token_ids, runner.requests, runner.input_batch, runner.discard_request_mask.gpu)
            runner._copy_valid_sampled_token_count(next_ids, counts)
        return torch.zeros((runner.input_batch.num_reqs, 0), dtype=torch.int32, device=runner.device)


class BatchClock:
    """Wall seconds of the engine core's steps, summed by how many requests the engine held when the step began
    (running + waiting): where a rollout's time goes by batch size, the regime a drafter is judged in (the long
    tail of a reasoning rollout keeps a few requests decoding for most of its wall time). Installed on every
    in-process engine, with or without a drafter, so both arms of a comparison are measured alike; it reads two list
    lengths and a clock per step.

    :meth:`install` wraps the engine core's ``step_fn`` (the step meter, when there is one, wraps the clock)."""

    def __init__(self, core) -> None:
        self.core, self.scheduler = core, core.scheduler
        self.seconds: dict[int, float] = {}  # requests in the engine -> seconds of steps, cumulative
        self._stock_step = core.step_fn

    def install(self) -> "BatchClock":
        self.core.step_fn = self.step
        return self

    def step(self):
        n = len(self.scheduler.running) + len(self.scheduler.waiting)
        t0 = time.perf_counter()
        out = self._stock_step()
        if n:
            self.seconds[n] = self.seconds.get(n, 0.0) + time.perf_counter() - t0
        return out


class StepMeter:
    """Wraps the in-process engine core's step: sets K for the coming step from the controller, and measures each
    step (batch size, K, tokens emitted, seconds) for it. Steps whose K = 0 is the controller's choice skip the
    drafter (:class:`DrafterGate`).

    Once a step skipped the drafter, the requests running lack drafter KV for its positions (:attr:`stale`) until
    the engine runs dry or :meth:`rollout.vllm_engine.VLLMEngine.generate` hands them over as fresh requests.
    Meanwhile they are not speculated on (K = 0, drafter skipped) unless the controller explores a K, and no step's
    acceptance is fed to the controller. Why: drafts over a drafter KV with holes are accepted far less often
    (acceptance per position 0.73 / 0.51 / 0.38 / 0.35 against 0.88 / 0.81 / 0.72 / 0.60 with the drafter's KV
    complete, DLER policy, tails of <= 16), and pooled into the acceptance that every batch size's goodput estimate
    reads, they make K = 0 look better everywhere, which skips the drafter more: a feedback loop.

    The counters (``drafts``, ``draft_tokens``, ``accepted_tokens``, ``accepted_per_pos``) are vLLM's speculation
    counters, summed from each step's scheduler stats (reading them back through ``LLM.get_metrics()`` costs ~2 ms
    a call, which a batch-1 rollout would pay on every generate call).

    :meth:`install` replaces ``Scheduler.schedule`` on the engine's scheduler instance with :meth:`schedule` and the
    engine core's ``step_fn`` with :meth:`step`; :meth:`schedule` rewrites ``Scheduler.dynamic_sd_lookup``."""

    def __init__(self, core, controller: SpecController, gate: DrafterGate) -> None:
        self.core, self.scheduler, self.controller, self.gate = core, core.scheduler, controller, gate
        self.size = len(self.scheduler.dynamic_sd_lookup)
        self.steps = self.spec_steps = self.skipped_steps = 0  # steps; with K > 0; without the drafter
        self.drafts = self.draft_tokens = self.accepted_tokens = 0
        self.accepted_per_pos = [0] * controller.k_max
        self._prev_k: int | None = None
        self._last = None  # the scheduler output of the step being run
        self.stale = False  # running requests lack drafter KV (a skipped step since they began)
        self._stock_schedule, self._stock_step = self.scheduler.schedule, core.step_fn

    def install(self) -> "StepMeter":
        self.scheduler.schedule = self.schedule
        self.core.step_fn = self.step
        return self

    def schedule(self, *args, **kwargs):
        """``Scheduler.schedule`` with the controller's K for this batch size written into ``dynamic_sd_lookup``."""
        controller, scheduler = self.controller, self.scheduler
        if not scheduler.running:
            self.stale = False  # every request is new: its prefill writes the drafter's KV
        batch = len(scheduler.running) + len(scheduler.waiting)
        size = max(1, min(batch, self.size - 1))
        k = controller.k_for(size)
        skip = k == 0 and (controller.forced_off or controller.effective(controller.bucket(size)) == 0)
        if self.stale and k > 0 and not controller.exploring(size):
            k, skip = 0, True
        self.gate.skip = skip
        self.stale = (self.stale or skip) and not self.gate.stateless
        scheduler.dynamic_sd_lookup = [0] + [k] * (self.size - 1)
        self._last = self._stock_schedule(*args, **kwargs)
        return self._last

    def step(self):
        """The engine core's ``step_fn``, timed and recorded for the controller (-> what vLLM's returns)."""
        self.gate.kv_only_s = 0.0
        t0 = time.perf_counter()
        outputs, executed = self._stock_step()
        dt = time.perf_counter() - t0
        so = self._last
        if executed and so is not None and so.num_scheduled_tokens:
            k = getattr(so, "num_spec_tokens_to_schedule", 0) or 0
            prefill = bool(so.scheduled_new_reqs)
            # a K = 0 step that still ran the drafter (an exploration of K = 0 where the controller speculates) is
            # recorded at what K = 0 costs when chosen: without the drafter's forward, which the gate skips
            self.controller.record(len(so.num_scheduled_tokens), k, dt - self.gate.kv_only_s,
                                   measurable=not prefill and k == self._prev_k)
            self._prev_k = k
            self.steps += 1
            self.spec_steps += int(k > 0)
            self.skipped_steps += int(self.gate.skip)
        self._count(outputs)
        return outputs, executed

    def _count(self, outputs) -> None:
        """Add one step's speculation stats (per engine-core output) to the counters and, unless :attr:`stale` (as
        set when this step was scheduled), to the controller's acceptance."""
        for eco in outputs.values():
            sd = eco.scheduler_stats.spec_decoding_stats if eco.scheduler_stats is not None else None
            if sd is None:
                continue
            self.drafts += sd.num_drafts
            self.draft_tokens += sd.num_draft_tokens
            self.accepted_tokens += sd.num_accepted_tokens
            for i, n in enumerate(sd.num_accepted_tokens_per_pos):
                self.accepted_per_pos[i] += n
            if not self.stale:
                self.controller.observe(sd.num_draft_tokens_per_pos, sd.num_accepted_tokens_per_pos)
