"""Lookup drafts beside a trained head: per request, the draft expected to emit more tokens (``rollout.lookup_blend``).

:class:`LookupBlend` runs inside :class:`rollout.vllm_patches.metering.DrafterGate` on every drafting step of an
engine whose drafter is a trained head (EAGLE, EAGLE-3, draft model). After the head drafted K tokens per request,
it keeps a :class:`rollout.lookup.LookupIndex` of every request's text and, where the lookup found K tokens, lets
:class:`rollout.controller.DraftSources` pick whose draft the step verifies. Replaced rows keep the head's shape (a
``[requests, K]`` tensor, as vLLM's EAGLE path expects); where vLLM holds the head's draft probabilities (rejection
sampling with probabilistic drafting) the replaced rows become one-hot on the lookup's tokens: a deterministic
proposal, which rejection sampling verifies exactly (accept with p(x), else sample from p without x). Coupled
verification does not read draft probabilities. The head's own KV is written from the target's accepted tokens at
its next proposal, whichever draft was verified, so the head drafts the next round as it would have.

The verification of step t's drafts arrives with step t + 1's sampled tokens (valid tokens per row; rejected
positions hold -1): each request's accepted count is credited to the source that drafted it.

A request handed over (the engine's tail hand-off) arrives as a new request whose prompt is the original prompt +
its partial completion; ``extra_args["laconic_continued"]`` (its completion length so far) recovers the original
prompt, so it is looked up among its siblings. Only installed through :func:`rollout.vllm_patches.install`.
"""
from __future__ import annotations

import torch

from rollout.controller import DraftSources
from rollout.lookup import LookupIndex


class LookupBlend:
    """The lookup side of a head-drafting runner (see the module docstring)."""

    def __init__(self, runner, sources: DraftSources, n_min: int, n_max: int, history: bool) -> None:
        self.runner, self.sources = runner, sources
        self.index = LookupIndex(n_min, n_max, history=history)
        self.pending: dict[str, tuple[str, int, int]] = {}  # request -> (source, match length, draft length) of the
        # drafts the coming step verifies
        self.replaced = 0  # rows whose head draft was replaced (cumulative; tests read it)
        self.one_hot = 0  # ... of which vLLM held draft probabilities (made one-hot)

    def _valid(self, sampled) -> list[list[int]]:
        rows = sampled.tolist() if torch.is_tensor(sampled) else sampled
        return [[t for t in row if t >= 0] for row in rows]

    def __call__(self, sampled, drafts: torch.Tensor | None) -> torch.Tensor | None:
        """This step's sampled tokens (``[requests, <= K + 1]``, -1 = rejected) and the head's drafts for the next
        (``[requests, K]``; None: the step drafts nothing) -> the drafts to verify."""
        batch = self.runner.input_batch
        ids, discard = batch.req_ids, self.runner.discard_request_mask.np
        got = self._valid(sampled)
        pending, self.pending = self.pending, {}
        k = int(drafts.shape[1]) if drafts is not None else 0
        rows, lookups = [], []
        for row, rid in enumerate(ids[:len(got)]):
            new = got[row] if not discard[row] else []
            if not new:
                continue
            if rid in pending:
                source, n, length = pending[rid]
                self.sources.record(source, n, length, len(new) - 1)
            self._sync(row, rid, new)
            if not k:
                continue
            draft, n = self.index.match(rid, k)
            n = n if len(draft) == k else 0
            source = self.sources.pick(n, k) if n else "head"
            if source == "lookup":
                rows.append(row)
                lookups.append(draft)
            self.pending[rid] = (source, n, k)
        self.index.retire(ids)
        if not rows:
            return drafts
        drafts = drafts.clone()
        drafts[rows] = torch.tensor(lookups, dtype=drafts.dtype, device=drafts.device)
        probs = self.runner._draft_probs
        if probs is not None:  # rejection sampling of probabilistic drafts: the lookup's proposal is deterministic
            sel = torch.tensor(rows, device=probs.device)
            one_hot = torch.zeros((len(rows), k, probs.shape[-1]), dtype=probs.dtype, device=probs.device)
            one_hot.scatter_(2, torch.tensor(lookups, device=probs.device).unsqueeze(-1), 1.0)
            probs[sel, :k] = one_hot
            self.one_hot += len(rows)
        self.replaced += len(rows)
        return drafts

    def _sync(self, row: int, rid: str, new: list[int]) -> None:
        """Bring the index's copy of request ``rid`` (batch row ``row``) up to its tokens after this step's ``new``
        ones. Before the runner's bookkeeping (where a head's proposal runs) ``token_ids_cpu[row, :num_tokens_no_spec]``
        holds the tokens before this step's."""
        batch = self.runner.input_batch
        n = int(batch.num_tokens_no_spec[row])
        known = self.index.known(rid)
        if known < 0:
            prompt_len = int(batch.num_prompt_tokens[row])
            state = self.runner.requests.get(rid)
            sp = getattr(state, "sampling_params", None)
            prompt_len -= int(((sp.extra_args or {}) if sp is not None else {}).get("laconic_continued", 0))
            tokens = batch.token_ids_cpu[row, :n]
            self.index.sync(rid, tokens[:prompt_len], tokens)
            known = n
        if known < n:
            self.index.append(rid, batch.token_ids_cpu[row, known:n])
            known = n
        self.index.append(rid, new[known - n:])
