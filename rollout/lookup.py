"""Lookup drafts: speculation that needs no trained head.

A GRPO rollout samples ``rollout.n`` completions of every prompt at once, and a reasoning policy repeats itself: a
completion re-states the prompt's numbers, re-checks its own steps, and its siblings (the other completions of the
same prompt) walk much the same path a few tokens apart. :class:`LookupIndex` drafts from that text: the tokens
that followed the longest recent occurrence (``n_max`` down to ``n_min`` tokens) of a request's last tokens, looked
up in the request itself, in its siblings (running now) and in the earlier completions of the same prompt (earlier
calls of this engine: the same prompt in a later epoch, the held-out prompts at every evaluation). Lookup costs a
few dictionary operations per emitted token, no forward pass, and nothing to train or export.

Occurrences are grouped by prompt (the exact prompt token ids): completions of other prompts are not searched, since
on tasks whose prompts differ in their numbers the same phrase continues differently. Within a group the latest
registration of an n-gram wins (recency: the last place the policy wrote it).

:class:`LookupProposer` is the vLLM side: a proposer of vLLM's public ``custom_class`` speculative method
(``speculative_config={"method": "custom_class", "model": "rollout.lookup.LookupProposer"}``), constructed by vLLM
with the engine's config; :func:`rollout.vllm_patches.install` binds it to the model runner, from which it reads the
request ids, prompt lengths and the step's K. Verification is vLLM's (or coupled sampling's), so lookup drafts are
exactly as lossless as the EAGLE head's. Beside a trained head (``rollout.lookup_blend``), the same index drafts per
request where :class:`rollout.controller.DraftSources` measures its drafts to emit more than the head's
(:mod:`rollout.vllm_patches.blend`). Pure Python + numpy: imports without vLLM.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np


class _Group:
    """Every sequence of one prompt seen by the index, and its n-gram table."""

    __slots__ = ("key", "seqs", "table", "prompt_registered", "live")

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.live = 0  # requests of this prompt running now
        self.seqs: list[list[int]] = []  # prompt + completion tokens of each sequence
        self.table: dict[tuple, tuple[int, int]] = {}  # n-gram -> (sequence, position of the token after it)
        self.prompt_registered = False  # the prompt's own n-grams are registered once, from the first sequence


class LookupIndex:
    """n-gram -> continuation index over token sequences grouped by prompt (see the module docstring).

    :meth:`sync` adds a request's tokens so far (only the new ones are read), :meth:`propose` drafts up to ``k``
    tokens for it. ``max_groups`` bounds memory: the least recently used prompt's sequences are dropped first.
    ``history=False`` keeps a prompt's text only while one of its requests runs (its own text and its siblings':
    what a single call offers, e.g. to measure lookup without earlier completions of the same prompts)."""

    def __init__(self, n_min: int = 2, n_max: int = 4, max_groups: int = 2048, history: bool = True) -> None:
        if not 1 <= n_min <= n_max:
            raise ValueError(f"lookup n-gram lengths must satisfy 1 <= n_min <= n_max (got {n_min}, {n_max})")
        self.n_min, self.n_max, self.max_groups, self.history = n_min, n_max, max_groups, history
        self.groups: OrderedDict[bytes, _Group] = OrderedDict()
        self.live: dict[str, tuple[_Group, int]] = {}  # request id -> (its group, its sequence index)

    def _register(self, group: _Group, s: int, start: int) -> None:
        """Register the n-grams that end right before each position ``>= start`` of sequence ``s``."""
        seq, table = group.seqs[s], group.table
        for i in range(max(start, 1), len(seq)):
            for n in range(self.n_min, min(self.n_max, i) + 1):
                table[tuple(seq[i - n:i])] = (s, i)

    def sync(self, req_id: str, prompt, tokens) -> None:
        """Bring request ``req_id``'s sequence up to ``tokens`` (prompt + completion so far; a prefix of what it was
        synced with before, plus new tokens). ``prompt``: its prompt tokens (the group key; read at a new request)."""
        entry = self.live.get(req_id)
        if entry is None:
            key = np.asarray(prompt, dtype=np.int64).tobytes()
            group = self.groups.get(key)
            if group is None:
                group = self.groups[key] = _Group(key)
                while len(self.groups) > self.max_groups:
                    self.groups.popitem(last=False)
            self.groups.move_to_end(key)
            group.seqs.append([int(t) for t in prompt])
            s = len(group.seqs) - 1
            entry = self.live[req_id] = (group, s)
            group.live += 1
            # siblings share the prompt: its n-grams are registered once; a sibling registers from the boundary on
            start = 1 if not group.prompt_registered else max(1, len(prompt) - self.n_max + 1)
            group.prompt_registered = True
            self._register(group, s, start)
        group, s = entry
        seq = group.seqs[s]
        if len(tokens) > len(seq):
            start = len(seq)
            seq.extend(int(t) for t in tokens[start:])
            self._register(group, s, start)

    def known(self, req_id: str) -> int:
        """How many tokens (prompt included) of ``req_id`` the index holds; -1 for a request it does not know."""
        entry = self.live.get(req_id)
        return -1 if entry is None else len(entry[0].seqs[entry[1]])

    def append(self, req_id: str, new_tokens) -> None:
        """Add tokens that follow what the index holds of live request ``req_id`` (:meth:`sync`, without its full
        token list: a caller that has only the newest tokens at hand)."""
        group, s = self.live[req_id]
        seq = group.seqs[s]
        start = len(seq)
        seq.extend(int(t) for t in new_tokens)
        self._register(group, s, start)

    def match(self, req_id: str, k: int) -> tuple[list[int], int]:
        """-> (up to ``k`` drafted tokens for ``req_id`` (synced): what followed the longest matching recent n-gram,
        that n-gram's length); ([], 0) when no n-gram of ``n_min..n_max`` tokens matches."""
        group, s = self.live[req_id]
        seq = group.seqs[s]
        for n in range(min(self.n_max, len(seq)), self.n_min - 1, -1):
            hit = group.table.get(tuple(seq[len(seq) - n:]))
            if hit is not None:
                t, p = hit
                return group.seqs[t][p:p + k], n
        return [], 0

    def propose(self, req_id: str, k: int) -> list[int]:
        """Up to ``k`` drafted tokens for ``req_id`` (synced): what followed the longest matching recent n-gram."""
        return self.match(req_id, k)[0]

    def retire(self, live_ids) -> None:
        """Forget the live entries of requests not in ``live_ids`` (their sequences stay, as earlier completions)."""
        keep = set(live_ids)
        for r in [r for r in self.live if r not in keep]:
            group = self.live.pop(r)[0]
            group.live -= 1
            if not self.history and not group.live:
                self.groups.pop(group.key, None)


class LookupProposer:
    """vLLM ``custom_class`` proposer drafting from a :class:`LookupIndex` (see the module docstring).

    vLLM calls :meth:`propose` on every step that proposes drafts, with each request's tokens so far
    (``token_ids_cpu[row, :num_tokens_no_spec[row]]``). :meth:`bind` (called by ``rollout.vllm_patches.install``)
    gives it the model runner, for the rows' request ids and prompt lengths; :attr:`step_k` is the K the step
    meter's controller chose for the step (the drafter gate sets it; vLLM's ``custom_class`` call does not pass it)."""

    stateless = True  # no drafter KV: a step without drafts leaves nothing to re-prefill

    def __init__(self, vllm_config=None) -> None:
        spec = getattr(vllm_config, "speculative_config", None)
        self.k = int(spec.num_speculative_tokens) if spec is not None else 4
        model = getattr(vllm_config, "model_config", None)
        self.max_model_len = int(model.max_model_len) if model is not None else 1 << 30
        self.index = LookupIndex()
        self.runner = None
        self.step_k = self.k
        self.proposed = 0  # requests drafted for (cumulative; tests read it)
        self.matched = 0  # ... of which the lookup found a continuation

    def bind(self, runner, n_min: int = 2, n_max: int = 4, history: bool = True) -> "LookupProposer":
        self.runner = runner
        self.index = LookupIndex(n_min, n_max, history=history)
        return self

    def propose(self, sampled_token_ids, num_tokens_no_spec, token_ids_cpu, slot_mappings=None) -> list[list[int]]:
        if self.runner is None:
            raise RuntimeError("LookupProposer is used through rollout.vllm_patches.install, which binds it to the "
                               "model runner (request ids, prompt lengths)")
        batch = self.runner.input_batch
        ids, prompt_lens = batch.req_ids, batch.num_prompt_tokens
        k = min(self.step_k, self.k)
        out: list[list[int]] = []
        for row, sampled in enumerate(sampled_token_ids):
            n = int(num_tokens_no_spec[row])
            room = min(k, self.max_model_len - n - 1)
            if not len(sampled) or room <= 0:  # a discarded (partial prefill) sample, or no room left
                out.append([])
                continue
            tokens = token_ids_cpu[row, :n]
            rid = ids[row]
            self.index.sync(rid, tokens[:int(prompt_lens[row])], tokens)
            draft = self.index.propose(rid, room)
            self.proposed += 1
            self.matched += int(bool(draft))
            out.append(draft)
        self.index.retire(ids[:len(sampled_token_ids)])
        return out

    def load_model(self, *args, **kwargs) -> None:  # vLLM calls this on every proposer; nothing to load
        pass
