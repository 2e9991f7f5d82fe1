"""The goodput controller that decides, per batch-size bucket, whether and how far to speculate.

Pure Python (no vLLM, no torch): it receives numbers (per-step speculation counts, step timings) and returns K's.
The vLLM glue that feeds it and applies its choices is :class:`rollout.vllm_patches.metering.StepMeter`; keeping
the decision rule apart from the engine makes it testable without one and lets its state be checkpointed on its own.
"""
from __future__ import annotations

import logging

log = logging.getLogger("laconic.speculative")


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

    The choice changes only when another K's estimate beats it by ``margin``. What runs is :meth:`effective`: a
    bucket whose own choice is K = 0 still speculates while a larger bucket does (at the K of the nearest such one),
    so speculation never stops and restarts as a rollout's batch shrinks. Why: a stretch at K = 0 leaves the running
    requests without drafter KV, and speculating again after it needs a hand-over that re-prefills every running
    request (prompt and completion), which the per-step goodputs do not price. Measured on SmolLM2 (30 layers) at
    batch 16: per-bucket choices K 2 / 0 / 0 / 4 / 1 at 1 / 2 / 4 / 8 / 16 made calls with 16 hand-overs take 3.06 /
    1.36 s against 0.95 s without, 0.69x of plain decoding overall while the drafter engine forced to K = 0 ran at
    0.96x. A smaller batch gains at least as much from speculation as a larger one, so a K = 0 choice below a
    speculating bucket is a noisy measurement more often than a real loss.

    Why the two factors are measured apart: goodput measured directly as tokens / seconds per step is too noisy at
    small batch sizes. A step's tokens swing with a few accept/reject coin flips and with requests ending mid-round,
    and the K in use is re-measured every step while a challenger gets one sample per exploration, so a few unlucky
    samples keep a worse K chosen for hundreds of steps (2.5 instead of 3.7 tokens per step at batch 1).
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
        self.sources: DraftSources | None = None  # per-request head-or-lookup choice (rollout.lookup_blend)

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
        return self.effective(b)

    def effective(self, b: int) -> int:
        """K that bucket ``b`` runs at: its choice, or, when that is 0, the choice of the nearest larger bucket that
        speculates by measurement (0 if none does; see the class docstring). A bucket without step measurements
        still holds the optimistic start, which says nothing about smaller batches."""
        if self.choice[b] > 0:
            return self.choice[b]
        for bb in self.buckets[self.buckets.index(b) + 1:]:
            if self.choice[bb] > 0 and any(bk == bb for bk, _ in self.samples):
                return self.choice[bb]
        return 0

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
            if self.effective(b) > 0 and high >= low:
                best = high
            low = b + 1
        return best

    def speedups(self) -> dict[int, float]:
        """Per batch-size bucket that speculates: estimated goodput at the chosen K over goodput at K = 0, both from
        this engine's own steps (only where each has >= 2 measurements)."""
        out = {}
        for b in self.buckets:
            g, k = self.goodputs(b), self.effective(b)
            if k > 0 and k in g and g.get(0, 0.0) > 0:
                out[b] = g[k] / g[0]
        return out

    def lookup(self, size: int) -> list[int]:
        """The dense ``dynamic_sd_lookup`` for batch sizes 0..size-1 with the current choices (no exploration)."""
        return [0] + [0 if self.forced_off else self.effective(self.bucket(n)) for n in range(1, size)]

    def state_dict(self) -> dict:
        out = {"samples": {f"{b},{k}": v for (b, k), v in self.samples.items()}, "steps": dict(self.steps),
               "choice": dict(self.choice), "drafted": list(self.drafted), "accepted": list(self.accepted)}
        if self.sources is not None:
            out["sources"] = self.sources.state_dict()
        return out

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
        if self.sources is not None and "sources" in state:
            self.sources.load_state_dict(state["sources"])


class DraftSources:
    """Per request, whose draft a speculating step verifies: the trained head's or the lookup's (rollout/lookup.py).

    With a trained drafter and ``rollout.lookup_blend``, the head drafts every request and the lookup index is
    searched too; where it found a full K-token continuation after an n-token match, that draft replaces the head's
    when it is expected to emit more tokens. Expected tokens of a K-token draft from source s are ``1 + a_1 + ... +
    a_K`` (the controller's rule), from s's per-position acceptance measured on requests of the same kind: keyed by
    the match length n (0: no match), since a request the lookup matches is repetitive text, on which the head too is
    accepted more often than on average, so comparing the lookup's acceptance there with the head's overall would
    favour the lookup. Counts forget with ``decay`` per draft recorded (the policy and the head change). Until both
    sources have ``explore`` drafts at a match length, the one picked fewer times there is picked; after that every
    ``explore_every``-th request the comparison rejects is drafted by the loser anyway, so both stay measured.

    Verification does not depend on whose draft it checks (coupled sampling, rejection sampling with the replaced
    rows' draft probabilities one-hot): the choice moves acceptance only, never what is sampled."""

    def __init__(self, k_max: int, n_max: int, decay: float = 0.998, explore: int = 32,
                 explore_every: int = 16) -> None:
        self.k_max, self.decay, self.explore, self.explore_every = k_max, decay, explore, explore_every
        # (source, match length) -> decayed count of drafts with a position i / accepted through position i
        self.drafted = {(s, n): [0.0] * k_max for s in ("head", "lookup") for n in range(n_max + 1)}
        self.accepted = {key: [0.0] * k_max for key in self.drafted}
        self.rejected = 0  # comparisons lost since the last exploration (the exploration counter)
        self.picked = {"head": 0, "lookup": 0}  # requests drafted by each source (cumulative; metrics read it)
        self.tried = {key: 0 for key in self.drafted}  # picks per (source, match length), cumulative

    def expected(self, source: str, n: int, k: int) -> float:
        """Expected tokens a K-token draft of ``source`` emits on a request whose lookup matched ``n`` tokens."""
        d, a = self.drafted[(source, n)], self.accepted[(source, n)]
        return 1.0 + sum(a[i] / d[i] for i in range(min(k, self.k_max)) if d[i] > 0)

    def pick(self, n: int, k: int) -> str:
        """"lookup" or "head" for a request whose lookup found a K-token draft after an ``n``-token match."""
        if min(self.drafted[("lookup", n)][0], self.drafted[("head", n)][0]) < self.explore:
            # drafts are credited a step after they are picked: alternate by picks, not by credited drafts
            choice = "lookup" if self.tried[("lookup", n)] <= self.tried[("head", n)] else "head"
        else:
            best, other = (("lookup", "head") if self.expected("lookup", n, k) > self.expected("head", n, k)
                           else ("head", "lookup"))
            self.rejected += 1
            choice = other if self.explore_every and self.rejected % self.explore_every == 0 else best
        self.picked[choice] += 1
        self.tried[(choice, n)] += 1
        return choice

    def record(self, source: str, n: int, length: int, accepted: int) -> None:
        """A ``length``-token draft of ``source`` (lookup match length ``n``; 0 = none) of which the first
        ``accepted`` tokens were accepted."""
        d, a = self.drafted[(source, n)], self.accepted[(source, n)]
        for i in range(self.k_max):
            d[i] = self.decay * d[i] + (i < length)
            a[i] = self.decay * a[i] + (i < min(accepted, length))

    def lookup_share(self) -> float:
        """Fraction of the requests drafted so far whose draft came from the lookup."""
        total = self.picked["head"] + self.picked["lookup"]
        return self.picked["lookup"] / total if total else 0.0

    def state_dict(self) -> dict:
        return {"drafted": {f"{s},{n}": v for (s, n), v in self.drafted.items()},
                "accepted": {f"{s},{n}": v for (s, n), v in self.accepted.items()},
                "rejected": self.rejected, "picked": dict(self.picked),
                "tried": {f"{s},{n}": v for (s, n), v in self.tried.items()}}

    def load_state_dict(self, state: dict) -> None:
        def key(text: str) -> tuple[str, int]:  # "lookup,3" -> ("lookup", 3)
            source, n = text.split(",")
            return source, int(n)

        drafted = {key(t): [float(x) for x in v] for t, v in state["drafted"].items()}
        accepted = {key(t): [float(x) for x in v] for t, v in state["accepted"].items()}
        if set(drafted) != set(self.drafted) or any(len(v) != self.k_max for v in drafted.values()):
            raise ValueError("draft-source state from another num_speculative_tokens / rollout.lookup_max_n: "
                             f"keys {sorted(drafted)[:4]}..., expected {sorted(self.drafted)[:4]}...")
        self.drafted, self.accepted = drafted, accepted
        self.rejected, self.picked = int(state["rejected"]), {k: int(v) for k, v in state["picked"].items()}
        self.tried = {key(t): int(v) for t, v in state["tried"].items()}
