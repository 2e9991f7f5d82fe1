"""Step 6 of the RL step: the drafter, trained online on the policy's own rollouts, and its hot swap into vLLM.

- **Data** comes from the trainer's forward over the step's rollouts (``Features`` -> ``DrafterBatch``): no second
  forward pass. A replay window keeps the last ``drafter.replay_steps`` steps.
- **When**: with several ranks, in the idle window of the rollout: a rank whose share of the rollout is done posts
  an asynchronous all-reduce and trains the drafter until every rank has joined it (the last rank to finish joins at
  once and does not train), then the ranks' drafters are averaged weighted by the steps each took. With one rank
  there is no idle window: the drafter trains for a bounded budget (``drafter.budget_s``) after the update, or,
  with ``drafter.background=true``, in a low-priority process of its own on the core the rollout leaves idle
  (:mod:`drafters.background`), with nothing added to the step but the export and swap.
- **Warm start**: before RL step 1 the drafter trains on base-model rollouts of a few training prompts (outside the
  prompt stream, so the RL data order is the same with and without a drafter).
- **Sync**: after the policy sync, the new drafter is exported and hot-swapped into the engine; the EAGLE head
  keeps reading the policy's embedding and LM head, which the policy sync just refreshed.

Logged per step: ``drafter/train_s`` (time spent training), ``drafter/overhead_s`` (wall time the drafter added to
the step: training outside idle windows, averaging, export and swap), ``drafter/loss``, ``drafter/top1``,
``drafter/steps``, and from the rollout ``spec/*``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from drafters.config import DrafterConfig
from drafters.online import OnlineDrafter
from drafters.types import DrafterStats
from rollout.types import Prompt, SamplingSpec, SpecStats
from trainers import distributed


class DrafterPhase:
    def __init__(self, cfg: DrafterConfig, policy_path: str, policy, temperature: float, folder: Path, seed: int,
                 world_size: int) -> None:
        self.cfg, self.policy, self.folder, self.world_size = cfg, policy, folder, world_size
        embed, head = self.policy_tensors()
        config = json.loads((Path(policy_path) / "config.json").read_text())
        if cfg.background:
            if world_size > 1:
                raise ValueError(f"drafter.background=true trains the drafter beside one rank; with {world_size} "
                                 "ranks it trains in the rollout's idle windows (set drafter.background=false)")
            from drafters.background import BackgroundDrafter

            self.drafter = BackgroundDrafter(cfg, config, embed, head, temperature, seed)
        else:
            self.drafter = OnlineDrafter(cfg, config, embed, head, temperature, seed)
        self.export = self.drafter.export(self.folder / "v0")  # untrained: the engine is built with it
        self.step_stats: dict = {}
        self._idle = DrafterStats(0.0, 0.0, 0.0)

    def policy_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's current input embedding and LM head weights (gathered under ZeRO-3), detached copies."""
        from trainers.models import lm_head
        from trainers.weights import hf_root

        emb, head = hf_root(self.policy.module).get_input_embeddings().weight, lm_head(self.policy.module).weight
        with self.policy.gathered([emb, head]):
            return emb.detach().clone(), head.detach().clone()

    # ------------------------------------------------------------------ warm start
    def warm_start(self, engine, prompts: list[Prompt], n: int, max_tokens: int, temperature: float,
                   features_of, seed: int) -> dict:
        """Base-model rollouts of ``prompts`` -> trainer features -> ``warmup_steps`` drafter steps -> hot swap."""
        t0 = time.perf_counter()
        engine.controller.forced_off = True  # the untrained drafter would only cost time
        _, t1, t2 = self._roll_into_window(engine, prompts, SamplingSpec(n=n, max_tokens=max_tokens,
                                                                         temperature=temperature,
                                                                         seed=seed * 7_717 + 11), features_of)
        engine.controller.forced_off = engine.lossless == "broken" and temperature > 0
        stats = self.drafter.train(budget_s=float("inf"), max_steps=self.cfg.warmup_steps)
        if self.world_size > 1:  # each rank warmed up on its own prompts
            self.drafter.average_with(distributed.all_sum, float(stats.steps))
        self._swap(engine)
        out = {"drafter/warmup_s": time.perf_counter() - t0, "drafter/warmup_rollout_s": t1 - t0,
               "drafter/warmup_features_s": t2 - t1, "drafter/warmup_train_s": stats.train_s,
               "drafter/warmup_loss": stats.loss,
               "drafter/warmup_top1": stats.top1_agreement, "drafter/warmup_steps": stats.steps}
        return out

    # ------------------------------------------------------------------ in the step
    def begin_step(self) -> None:
        """Open this RL step's slot in the replay window; idle-window training only sees earlier steps."""
        self.drafter.new_step()
        self._idle = DrafterStats(0.0, 0.0, 0.0)
        if self.cfg.background:
            self.drafter.run(True)  # from the first step on (after the warm start, or after a resume)

    def idle_train(self) -> None:
        """Called once per RL step, right after this rank's last rollout (with dynamic sampling, its last round).
        Several ranks: post an asynchronous all-reduce that completes when every rank has finished its rollout, and
        train until it does (every rank posts it once a step, also one with nothing to train: the collectives must
        match). One rank: nothing (no one to wait for)."""
        if self.world_size == 1:
            return
        work = dist.all_reduce(torch.ones(1), async_op=True)
        if self.drafter.rows():
            self.drafter.set_policy_tensors(*self.policy_tensors())
            left = self.cfg.max_steps_per_update - self._idle.steps
            st = self.drafter.train(budget_s=float("inf"), max_steps=left, should_stop=work.is_completed)
            self._idle = self._idle.plus(st)
        work.wait()

    def add_features(self, feats) -> None:
        self.drafter.add(feats.to_drafter_batch())

    def after_update(self, engine) -> dict:
        """One rank: the bounded training budget (background: collect what the worker trained meanwhile); several
        ranks: combine the idle-window updates. Then swap."""
        t0 = time.perf_counter()
        stats = self._idle
        if self.cfg.background:  # it trained while the step ran; from now on with the updated policy's tensors
            self.drafter.set_policy_tensors(*self.policy_tensors())
            self.export, stats = self.drafter.sync(self.folder / "current")
            engine.load_drafter(self.export)
            return self._after(stats, t0)
        if self.world_size == 1:
            self.drafter.set_policy_tensors(*self.policy_tensors())
            stats = self.drafter.train(budget_s=self.cfg.budget_s, max_steps=self.cfg.max_steps_per_update)
        else:
            self.drafter.average_with(distributed.all_sum, float(stats.steps))
        self._swap(engine)
        return self._after(stats, t0)

    def finish(self, engine, prompts: list[Prompt] | None = None, n: int = 1, max_tokens: int = 0,
               temperature: float = 1.0, features_of=None, seed: int = 0) -> dict:
        """After the last RL step: ``drafter.final_steps`` optimizer steps on the replay window (the last steps'
        rollouts of the policy as it ends; in the foreground, also with ``background``), plus, given ``prompts``
        (``drafter.final_prompts``), fresh rollouts of them by the final policy (the window grows to hold them), then
        swap, so the final evaluation, the last checkpoint and the export have a drafter fitted to the final policy.
        Several ranks: each fits on its own rows, then the drafters are averaged."""
        t0 = time.perf_counter()
        late = 0
        if self.cfg.background:  # stop it, and count what it trained since the last step's swap
            self.drafter.run(False)
            late = self.drafter.collect().steps
        rows, rollout_s, features_s = 0, 0.0, 0.0
        if prompts:
            slots = -(-len(prompts) * n // self.cfg.max_rows_per_step)
            self.drafter.widen(self.cfg.replay_steps + slots)
            t = time.perf_counter()
            rows, t1, t2 = self._roll_into_window(engine, prompts, SamplingSpec(
                n=n, max_tokens=max_tokens, temperature=temperature, seed=seed * 7_717 + 29), features_of, slots)
            rollout_s, features_s = t1 - t, t2 - t1
        self.drafter.set_policy_tensors(*self.policy_tensors())
        stats = self.drafter.train(budget_s=float("inf"), max_steps=self.cfg.final_steps)
        if self.world_size > 1:
            self.drafter.average_with(distributed.all_sum, float(stats.steps))
        self._swap(engine)
        return {"drafter/final_steps": late + stats.steps, "drafter/final_train_s": stats.train_s,
                "drafter/final_top1": stats.top1_agreement, "drafter/final_rows": rows,
                "drafter/final_rollout_s": rollout_s, "drafter/final_features_s": features_s,
                "drafter/final_s": time.perf_counter() - t0}

    def _roll_into_window(self, engine, prompts: list[Prompt], spec: SamplingSpec, features_of,
                          slots: int = 1) -> tuple[int, float, float]:
        """Roll ``prompts`` out and add the trainer's features over them to the replay window, in ``slots`` new slots
        of up to ``drafter.max_rows_per_step`` rows (1: all in one, the slot keeping a random subset).
        -> (rows, time after the rollout, time after the features)."""
        batch = engine.generate(prompts, spec)
        t1 = time.perf_counter()
        self.drafter.new_step()
        rows = in_slot = 0
        for feats in features_of(batch):
            b = feats.to_drafter_batch()
            if slots > 1 and in_slot >= self.cfg.max_rows_per_step:
                self.drafter.new_step()
                in_slot = 0
            self.drafter.add(b)
            in_slot += b.token_ids.shape[0]
            rows += b.token_ids.shape[0]
        return rows, t1, time.perf_counter()

    def _after(self, stats: DrafterStats, t0: float) -> dict:
        overhead = time.perf_counter() - t0  # one rank: training (background: the wait for its step in progress) +
        # export + swap; several: averaging + swap
        return {"drafter/train_s": stats.train_s, "drafter/overhead_s": overhead, "drafter/loss": stats.loss,
                "drafter/top1": stats.top1_agreement, "drafter/steps": stats.steps, "drafter/version":
                self.drafter.version}

    def _swap(self, engine) -> None:
        self.export = self.drafter.export(self.folder / "current")
        engine.load_drafter(self.export)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return self.drafter.state_dict()

    def load_state_dict(self, state: dict, engine) -> None:
        self.drafter.load_state_dict(state)
        self._swap(engine)

    def close(self) -> None:
        """Stop the background drafter's process (nothing to do for the others)."""
        if self.cfg.background:
            self.drafter.close()


@torch.no_grad()
def rollout_features(model: torch.nn.Module, batch, micro_batch: int, pad_id: int = 0, temperature: float = 1.0):
    """The trainer's forward (no grad) over a rollout batch, micro-batch by micro-batch -> ``Features`` each."""
    from trainers.logprobs import completion_logprobs

    ids = [batch.prompts[int(i)].token_ids for i in batch.prompt_index]
    model.eval()
    for s in range(0, len(ids), micro_batch):
        yield completion_logprobs(model, ids[s:s + micro_batch], batch.completion_ids[s:s + micro_batch],
                                  batch.completion_mask[s:s + micro_batch], pad_id, temperature)[2]


def fit_on_rollouts(drafter: OnlineDrafter, model: torch.nn.Module, batch, steps: int, micro_batch: int = 32,
                    temperature: float = 1.0) -> DrafterStats:
    """Warm a drafter on a rollout batch of ``model`` (features from its forward) for ``steps`` optimizer steps:
    the trainer's warm start, outside the trainer (benchmarks, tests)."""
    drafter.new_step()
    for feats in rollout_features(model, batch, micro_batch, temperature=temperature):
        drafter.add(feats.to_drafter_batch())
    return drafter.train(budget_s=float("inf"), max_steps=steps)


def measure_speedup(engine, prompts: list[Prompt], batch_sizes: list[int], calls: int, max_tokens: int,
                    temperature: float, seed: int) -> dict:
    """The drafter's speedup as a user of the run's engine gets it: for each batch size b, ``calls`` generate calls of
    b prompts (cycling through ``prompts``), each made twice, alternately with the controller's speculation and with
    the drafter off (``forced_off``: every step at K = 0 with the drafter skipped, i.e. a plain engine), so machine
    noise hits both alike. Tokens and seconds are summed over ranks. -> ``{b: tokens/s ratio}`` (empty when
    speculation is not allowed or there are no prompts)."""
    ctl = engine.controller
    if ctl is None or ctl.forced_off or not prompts or not calls:
        return {}
    out = {}
    for b in batch_sizes:
        tot = torch.zeros(4, dtype=torch.float64)  # spec tokens, spec s, plain tokens, plain s
        for c in range(calls):
            chunk = [prompts[(c * b + i) % len(prompts)] for i in range(b)]
            spec = SamplingSpec(n=1, max_tokens=max_tokens, temperature=temperature, seed=seed + 7919 * c + b)
            for arm, off in ((0, False), (2, True)) if c % 2 == 0 else ((2, True), (0, False)):
                ctl.forced_off = off
                try:
                    t0 = time.perf_counter()
                    batch = engine.generate(chunk, spec)
                    tot[arm + 1] += time.perf_counter() - t0
                finally:
                    ctl.forced_off = False
                tot[arm] += float(batch.num_tokens.sum())
        tot = distributed.all_sum(tot)
        if tot[1] > 0 and tot[2] > 0:
            out[b] = float((tot[0] / tot[1]) / (tot[2] / tot[3]))
    return out


def spec_metrics(stats: list[SpecStats]) -> dict:
    """``spec/*`` of one step from every generate call of every rank (vLLM's definitions: the mean acceptance
    length counts the bonus token)."""
    tot = torch.tensor([[s.drafts, s.draft_tokens, s.accepted_tokens, s.handoffs, s.enabled_frac] for s in stats]
                       or [[0, 0, 0, 0, 0]], dtype=torch.float64)
    summed = distributed.all_sum(torch.cat([tot[:, :4].sum(0), torch.tensor([tot[:, 4].mean(), 1.0],
                                                                             dtype=torch.float64)]))
    drafts, draft_tokens, accepted, handoffs, enabled, ranks = summed.tolist()
    total = SpecStats(enabled / ranks, int(drafts), int(draft_tokens), int(accepted), int(handoffs))
    return {"spec/enabled_frac": total.enabled_frac, "spec/drafts": drafts, "spec/draft_tokens": draft_tokens,
            "spec/accepted_tokens": accepted, "spec/handoffs": handoffs,
            "spec/mean_accept_len": total.mean_accept_len,
            "spec/acceptance_rate": accepted / draft_tokens if draft_tokens else 0.0}

