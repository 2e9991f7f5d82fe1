"""Phases 1 (roll out) and 3 (select) of the RL step: rollouts from the colocated engine, their rewards, and which
groups a rank trains on. Between them the loop runs the drafter's idle window (phase 2), so phase 3's collectives
(the curriculum's gather) never keep a rank that finished early from training the drafter.

Without dynamic sampling a rank trains on exactly the groups it sampled. With it (DAPO, Yu et al. 2025), groups
whose rewards have zero spread carry no learning signal and are dropped (a group of one is kept, as in verl's DAPO
recipe that DLER runs; ``trainer.dynamic_sampling_metric=score`` filters on the reward before the truncation rule,
as DLER's ``seq_reward`` does, NVlabs/DLER @498b8ed6 ``recipe/dapo/dapo_ray_trainer.py``); more prompts are sampled until the rank
has its quota of groups or ``trainer.max_sample_rounds`` rounds have run, and a shortfall is filled with dropped
groups (their advantages are 0). With the DECS curriculum (Jiang et al. 2025) a share kappa of the quota goes to
all-correct groups, which carry the length signal of easy problems.

Rollout transforms (DOT) may shorten completions: the rows' ``completion_mask`` is cut to the tokens kept, so the
update never trains on tokens the reward did not see.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch

import rewards
from rewards import RewardInput, RewardOutput
from rewards.decs_curriculum import DECSCurriculum, select
from rewards.types import concat_outputs, select_output
from rollout.types import BatchTime, Prompt, RolloutBatch, SamplingSpec, SpecStats, concat_batches, select_rows
from trainers.backend import distributed
from trainers.config import Config
from trainers.data import PromptStream
from trainers.metrics import Timers


@dataclass(frozen=True)
class Sample:
    batch: RolloutBatch  # the rows this rank trains on (quota x rollout.n)
    rewards: RewardOutput  # their rewards, row-aligned with ``batch``
    stats: dict  # rollout/* and curriculum/* metrics of this step
    generated_tokens: int  # every token this rank generated this step (dropped groups included)
    spec: list[SpecStats] = field(default_factory=list)  # speculative-decoding counters of every rollout call
    timing: list[BatchTime] = field(default_factory=list)  # engine-step seconds by batch size of every rollout call


@dataclass
class Rounds:
    """What phase 1 (roll out) hands phase 3 (select): every sampling round of one step on this rank."""

    rounds: int = 0  # generation rounds run
    generated: int = 0  # tokens generated over all rounds
    spec: list[SpecStats] = field(default_factory=list)  # speculative-decoding counters of every round
    timing: list[BatchTime] = field(default_factory=list)  # engine-step seconds by batch size of every round
    observed: list = field(default_factory=list)  # curriculum observations of every round
    batches: list = field(default_factory=list)  # without dynamic sampling: the one (batch, rewards)
    kept: list = field(default_factory=list)  # dynamic sampling: (batch, rewards, rows) of groups with spread
    dropped: list = field(default_factory=list)  # dynamic sampling: (batch, rewards, rows) of zero-spread groups


def token_offsets(tokenizer, batch: RolloutBatch) -> list[list[int]]:
    """Character offset where each completion token starts in its decoded text (special tokens are empty)."""
    out = []
    for ids, n in zip(batch.completion_ids.tolist(), batch.num_tokens.tolist()):
        pieces = tokenizer.batch_decode([[t] for t in ids[:n]], skip_special_tokens=True)
        starts, pos = [], 0
        for p in pieces:
            starts.append(pos)
            pos += len(p)
        out.append(starts)
    return out


def has_signal(scores: torch.Tensor) -> bool:
    """Dynamic sampling's keep rule for one group's [G] scores: a spread (std > 0), or a group of one (verl's DAPO
    recipe, which DLER runs: NVlabs/DLER @498b8ed6 ``recipe/dapo/dapo_ray_trainer.py``). Example: [1, 0] -> True;
    [1, 1] -> False; [1] -> True."""
    return len(scores) == 1 or bool(scores.std() > 0)


def apply_kept_tokens(batch: RolloutBatch, out: RewardOutput) -> RolloutBatch:
    """Cut each row's ``completion_mask`` to the tokens a rollout transform kept (no-op without transforms)."""
    if out.kept_tokens is None:
        return batch
    keep = torch.arange(batch.completion_mask.shape[1])[None, :] < out.kept_tokens[:, None]
    texts = out.input.completions if out.input is not None else batch.texts
    return replace(batch, completion_mask=batch.completion_mask & keep, texts=list(texts))


def balance_groups(costs: list[int], ranks: int) -> list[list[int]]:
    """Groups (by ``costs``, e.g. tokens) -> ``ranks`` lists of group indices, the same number of groups each (ranks
    must run the same number of micro-batches), the costs spread by longest-processing-time first: each group, most
    costly first, to the least loaded rank that still has room (ties: the lower rank). Each list is in index order.
    Example: costs [9, 1, 1, 1], 2 ranks -> [[0, 3], [1, 2]] (loads 10 and 2: one 9 cannot be split)."""
    if len(costs) % ranks:
        raise ValueError(f"{len(costs)} groups cannot be dealt out equally to {ranks} ranks")
    room, load = [len(costs) // ranks] * ranks, [0] * ranks
    out: list[list[int]] = [[] for _ in range(ranks)]
    for g in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min((r for r in range(ranks) if room[r]), key=lambda r: (load[r], r))
        out[r].append(g)
        room[r] -= 1
        load[r] += costs[g]
    return [sorted(x) for x in out]


class Sampler:
    """Owns the prompt stream, the stateful reward terms and the curriculum of one rank."""

    def __init__(self, cfg: Config, engine, tokenizer, prompts: list[Prompt], rank: int, world_size: int) -> None:
        self.cfg, self.engine, self.tokenizer = cfg, engine, tokenizer
        self.quota = cfg.trainer.prompts_per_step // world_size
        self.stream = PromptStream(prompts, cfg.run.seed, rank, world_size)
        self.reward_cfg = _with_defaults(cfg)
        self.states = rewards.make_states(cfg.reward)
        self.curriculum = DECSCurriculum(cfg.reward) if cfg.reward.decs_curriculum.enabled else None
        self.needs_offsets = rewards.needs_token_offsets(cfg.reward)
        self.rng = random.Random(cfg.run.seed * 7_901 + rank)
        self.rank = rank

    # ------------------------------------------------------------------ phases
    def roll_out(self, step: int, timers: Timers) -> Rounds:
        """Phase 1: rollouts of this rank's prompts, each round scored; with dynamic sampling, rounds until the rank
        has its quota of groups with reward spread or ``trainer.max_sample_rounds`` rounds have run."""
        t = self.cfg.trainer
        r = Rounds()
        while True:
            with timers("rollout"):
                batch = self.rollout(step, r.rounds)
            r.generated += int(batch.num_tokens.sum())
            r.spec.append(batch.spec)
            r.timing.append(batch.timing)
            with timers("reward"):
                out = self.reward(batch)
            r.rounds += 1
            if self.curriculum is not None:
                r.observed.append(self.curriculum.observe(out.input))
            if not t.dynamic_sampling:
                r.batches.append((batch, out))
                return r
            score = {"reward": out.total, "score": out.score, "correct": out.correct.to(torch.float32)}[
                t.dynamic_sampling_metric]
            for g in range(len(batch.prompts)):
                rows = (batch.prompt_index == g).nonzero().flatten()
                (r.kept if has_signal(score[rows]) else r.dropped).append((batch, out, rows))
            if len(r.kept) >= self.quota or r.rounds >= t.max_sample_rounds:
                return r

    def select(self, r: Rounds) -> Sample:
        """Phase 3: the groups this rank trains on (dynamic sampling's kept groups, the curriculum's share of
        all-correct ones, fillers), and the step's one curriculum update from every rank's rounds (a collective:
        after the idle window, so a rank that finished early does not wait in it)."""
        if not self.cfg.trainer.dynamic_sampling:
            self._apply_curriculum(r.observed)
            batch, out = r.batches[0]
            return Sample(apply_kept_tokens(batch, out), out, {}, r.generated, r.spec, r.timing)
        chosen, stats = self._choose(r.kept, r.dropped)
        stats |= {"rollout/sample_rounds": r.rounds,
                  "rollout/kept_group_frac": len(r.kept) / (len(r.kept) + len(r.dropped))}
        self._apply_curriculum(r.observed)
        batch = concat_batches([select_rows(b, rows) for b, _, rows in chosen])
        out = concat_outputs([select_output(o, rows) for _, o, rows in chosen])
        return Sample(apply_kept_tokens(batch, out), out, stats, r.generated, r.spec, r.timing)

    def balance(self, sample: Sample) -> Sample:
        """Every rank's groups gathered and dealt out again by :func:`balance_groups` on their tokens (prompt +
        completion), the same on every rank (a collective; one rank: ``sample`` itself). Only the rows move: this
        rank's rollout and speculation statistics stay its own."""
        parts = distributed.gather_objects((sample.batch, sample.rewards))
        if len(parts) == 1:
            return sample
        batch = concat_batches([b for b, _ in parts])
        out = concat_outputs([o for _, o in parts])
        tokens = batch.completion_mask.sum(-1) + torch.tensor([len(batch.prompts[int(i)].token_ids)
                                                               for i in batch.prompt_index])
        groups = batch.group_ids.unique().tolist()  # sorted; prompts without rows (dropped groups) are not groups
        costs = [int(tokens[batch.group_ids == g].sum()) for g in groups]
        dealt = balance_groups(costs, len(parts))
        before = [int(t.sum()) for t in tokens.split([len(b.texts) for b, _ in parts])]  # rows in rank order
        after = [sum(costs[i] for i in d) for d in dealt]
        mean = sum(costs) / len(parts)
        stats = {"rollout/rank_token_imbalance_before": max(before) / mean}  # the busiest rank's tokens / the mean
        if max(after) >= max(before):  # the greedy deal is a heuristic: where it is no better, nothing moves
            return replace(sample, stats=sample.stats | stats | {"rollout/rank_token_imbalance": max(before) / mean})
        rows = torch.cat([(batch.group_ids == groups[i]).nonzero().flatten() for i in dealt[self.rank]])
        return replace(sample, batch=select_rows(batch, rows), rewards=select_output(out, rows),
                       stats=sample.stats | stats | {"rollout/rank_token_imbalance": max(after) / mean})

    def rollout(self, step: int, round_: int = 0) -> RolloutBatch:
        r = self.cfg.rollout
        prompts = self.stream.take(self.quota)
        spec = SamplingSpec(n=r.n, max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                            seed=(self.cfg.run.seed * 7_919 + step + 1) * 31 + round_)
        return self.engine.generate(prompts, spec)

    def reward(self, batch: RolloutBatch) -> RewardOutput:
        """Rewards from the state before this batch; then every rank's state update is applied on every rank."""
        offsets = token_offsets(self.tokenizer, batch) if self.needs_offsets else None
        inp = RewardInput(completions=batch.texts, num_tokens=batch.num_tokens, truncated=batch.truncated,
                          group_ids=batch.group_ids, meta=batch.meta, token_offsets=offsets,
                          max_tokens=self.cfg.rollout.max_tokens)
        out = rewards.compute(inp, self.reward_cfg, self.states)
        if self.states:
            local = rewards.observe(out.input, self.states)
            rewards.apply(self.states, distributed.gather_objects(local))
        return out

    # ------------------------------------------------------------------ helpers
    def _choose(self, kept: list, dropped: list) -> tuple[list, dict]:
        """Kept groups up to the quota, a curriculum share of all-correct dropped groups, then dropped fillers."""
        easy_ids, stats = [], {}
        if self.curriculum is not None:
            easy = [d for d in dropped if bool(d[1].correct[d[2]].all())]
            picks = select(list(range(len(easy))), min(len(kept), self.quota), self.curriculum.kappa, self.rng)
            easy_ids = [easy[i] for i in picks][: self.quota]
            stats = {"curriculum/kappa": self.curriculum.kappa, "curriculum/easy_groups": len(easy_ids)}
        rest = kept[: self.quota - len(easy_ids)]
        fillers = [d for d in dropped if all(d is not e for e in easy_ids)]
        chosen = (easy_ids + rest + fillers)[: self.quota]
        stats["rollout/filled_groups"] = max(0, self.quota - len(easy_ids) - len(rest))
        return chosen, stats

    def _apply_curriculum(self, observed: list) -> None:
        """One curriculum update per step from every round of every rank."""
        if self.curriculum is not None:
            self.curriculum.apply([u for part in distributed.gather_objects(observed) for u in part])

    def state_dict(self) -> dict:
        return {"stream": self.stream.state_dict(), "rewards": {k: v.state_dict() for k, v in self.states.items()},
                "curriculum": self.curriculum.state_dict() if self.curriculum is not None else None,
                "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        for name, st in self.states.items():
            st.load_state_dict(state["rewards"][name])
        if self.curriculum is not None:
            self.curriculum.load_state_dict(state["curriculum"])
        self.rng.setstate(_as_rng_state(state["rng"]))


def _as_rng_state(s):
    """``random.Random.getstate()`` after a JSON round trip (lists instead of tuples)."""
    return (s[0], tuple(s[1]), s[2]) if isinstance(s, list) else s


def _with_defaults(cfg: Config):
    """The reward config with run-dependent defaults filled (DECS's L_max = the completion cap)."""
    r = cfg.reward
    if r.decs.max_len <= 0:
        r = replace(r, decs=replace(r.decs, max_len=cfg.rollout.max_tokens))
    return r
