"""The drafter's phases of the RL step and its whole lifecycle: a speculator trained online on the policy's own
rollouts and hot-swapped into vLLM.

- **Warm start** (:meth:`DrafterPhase.warm_start`, before RL step 1): the drafter learns from base-model rollouts
  of a few training prompts (outside the prompt stream, so the RL data order is the same with and without a drafter).
  None with ``drafter.init``: a checkpoint folder, or ``cache`` -- the warm-started drafter the first run with this
  base model, data and drafter settings published under ``$LACONIC_CACHE/drafters/`` (:func:`drafter_cache_dir`).
- **Phase 2, idle window** (:meth:`DrafterPhase.idle_train`): with several ranks, a rank whose share of the rollout
  is done posts an asynchronous all-reduce and trains the drafter on earlier steps' rows until every rank has joined
  it (the last rank to finish joins at once and does not train). With one rank there is no idle window.
- **Data**: phase 4's forward (or phase 6's first pass) returns the step's rows with the trainer's hidden states
  (``DrafterBatch``): no second forward pass. A replay window keeps the last ``drafter.replay_steps`` steps.
- **Phase 8, drafter step** (:meth:`DrafterPhase.step`): the step's rows enter the window; one rank trains for a
  bounded budget (``drafter.budget_s``) or, with ``drafter.background=true``, collects what its low-priority
  process trained meanwhile (:mod:`drafters.background`); several ranks average the idle-window updates weighted by
  the steps each took. Then the new drafter is exported and hot-swapped into the engine; the EAGLE head keeps
  reading the policy's embedding and LM head, which phase 7's sync just refreshed.
- **Final fit** (:meth:`DrafterPhase.final_fit`, after the last step) and the **summary** the run reports
  (:meth:`DrafterPhase.summary`: acceptance, the controller's estimates, the measured end-of-run speedup).

Logged per step: ``drafter/train_s`` (time spent training), ``drafter/overhead_s`` (wall time the drafter added to
the step: training outside idle windows, averaging, export and swap), ``drafter/loss``, ``drafter/top1``,
``drafter/steps``, and from the rollout ``spec/*`` (:func:`trainers.metrics.spec_metrics`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

from drafters.online import OnlineDrafter
from drafters.trigger import DriftTrigger
from drafters.types import DrafterBatch, DrafterStats
from rollout.types import Prompt, SamplingSpec, SpecStats
from trainers.backend import distributed
from trainers.config import Config
from trainers.metrics import drafter_metrics


class DrafterPhase:
    """One rank's drafter: built before the engine (which starts with its untrained export), then driven by the
    loop through :meth:`warm_start`, :meth:`begin_step`, :meth:`idle_train`, :meth:`step`, :meth:`final_fit` and
    :meth:`summary`."""

    def __init__(self, cfg: Config, policy_path: str, policy, folder: Path, rank: int, world_size: int,
                 train_rows: list[dict], tokenizer, pad_id: int) -> None:
        self.cfg, self.rollout_cfg, self.data_cfg = cfg.drafter, cfg.rollout, cfg.data
        self.policy, self.folder, self.rank, self.world_size = policy, folder, rank, world_size
        self.seed, self.micro_batch, self.pad_id = cfg.run.seed, cfg.trainer.micro_batch_size, pad_id
        self.train_rows, self.tokenizer = train_rows, tokenizer
        embed, head = self.policy_tensors()
        config = json.loads((Path(policy_path) / "config.json").read_text())
        temperature = cfg.rollout.temperature
        if self.cfg.background:
            if world_size > 1:
                raise ValueError(f"drafter.background=true trains the drafter beside one rank; with {world_size} "
                                 "ranks it trains in the rollout's idle windows (set drafter.background=false)")
            from drafters.background import BackgroundDrafter

            self.drafter = BackgroundDrafter(self.cfg, config, embed, head, temperature, self.seed, self.final_norm())
        else:
            self.drafter = OnlineDrafter(self.cfg, config, embed, head, temperature, self.seed, self.final_norm())
        self.init_from, self.cache_dir = self._initialise(cfg, policy_path, config)
        self.trigger = DriftTrigger(self.cfg.drift_tolerance) if self.cfg.train_when == "drift" else None
        self.export = self.drafter.export(self.folder / "v0")  # the engine is built with it
        self._idle = DrafterStats(0.0, 0.0, 0.0)
        self.warmup_stats: dict = {}
        self.final_stats: dict = {}

    def _initialise(self, cfg: Config, policy_path: str, policy_config: dict) -> tuple[str, Path | None]:
        """``drafter.init``: load a checkpoint (a folder, or the cache when every rank finds it complete) into the
        fresh drafter. -> (where the weights came from, "" = nowhere yet; the cache folder when ``init=cache``)."""
        from drafters.online import read_weights

        init, cache = self.cfg.init, None
        if init == "cache":
            cache = drafter_cache_dir(cfg, policy_path, self.world_size)
            found = (cache / "COMPLETE").is_file()
            if self.world_size > 1:  # one decision for all ranks: each warms up, or none does
                found = int(distributed.all_sum(torch.tensor([int(found)]))[0]) == self.world_size
            if not found:
                return "", cache
            init = str(cache)
        if not init:
            return "", None
        state = self.drafter.state_dict()
        state["model"] = read_weights(init, policy_config, self.cfg.method, self.cfg.train_vocab)
        state["vocab_fixed"] = True  # an EAGLE-3 checkpoint's draft vocabulary is its own
        state["lr_ramp"] = self.cfg.init_lr_ramp  # a fresh optimizer on trained weights: ramp its learning rate up
        self.drafter.load_state_dict(state)  # the weights only: optimizer state and version start fresh
        return init, cache

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Policy layers whose output the trainer's forward keeps for the drafter (EAGLE-3), else ()."""
        return self.drafter.feature_layers

    def final_norm(self) -> torch.Tensor | None:
        """The policy's final RMSNorm weight (gathered under ZeRO-3), a detached copy; None if it has none."""
        from trainers.backend.models import decoder

        norm = getattr(decoder(self.policy.module), "norm", None)
        if norm is None or getattr(norm, "weight", None) is None:
            return None
        with self.policy.gathered([norm.weight]):
            return norm.weight.detach().clone()

    def policy_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The policy's current input embedding and LM head weights (gathered under ZeRO-3), detached copies."""
        from trainers.backend.models import lm_head
        from trainers.backend.weights import hf_root

        emb, head = hf_root(self.policy.module).get_input_embeddings().weight, lm_head(self.policy.module).weight
        with self.policy.gathered([emb, head]):
            return emb.detach().clone(), head.detach().clone()

    # ------------------------------------------------------------------ before RL step 1
    def warm_start(self, engine) -> dict:
        """Base-model rollouts of ``drafter.warmup_prompts`` training prompts (each rank its own strided share),
        capped at ``drafter.warmup_max_tokens`` (default: as the RL rollouts), ``rollout.n`` each but no more rows
        than the replay slot keeps -> trainer features -> ``warmup_steps`` drafter steps -> hot swap."""
        c, r = self.cfg, self.rollout_cfg
        if self.init_from:  # drafter.init: the engine already speculates with those weights
            self.warmup_stats = {"drafter/warmup_s": 0.0, "drafter/warmup_steps": 0}
            return self.warmup_stats
        prompts = self._prompts(c.warmup_prompts)
        n = min(r.n, -(-c.max_rows_per_step // len(prompts)))  # the replay slot keeps max_rows_per_step rows anyway
        spec = SamplingSpec(n=n, max_tokens=c.warmup_max_tokens or r.max_tokens, temperature=r.temperature,
                            seed=self.seed * 7_717 + 11)
        t0 = time.perf_counter()
        engine.controller.forced_off = True  # the untrained drafter would only cost time
        _, t1, t2 = self._roll_into_window(engine, prompts, spec)
        engine.controller.forced_off = engine.lossless == "broken" and r.temperature > 0
        if self.world_size > 1:  # an EAGLE-3 head's draft vocabulary: the same tokens on every rank
            self.drafter.fix_vocab(distributed.all_sum)
        stats = self.drafter.train(budget_s=float("inf"), max_steps=c.warmup_steps)
        if self.world_size > 1:  # each rank warmed up on its own prompts
            self.drafter.average_with(distributed.all_sum, float(stats.steps))
        self._swap(engine)
        if self.cache_dir is not None and self.rank == 0:
            save_to_cache(self.export.path, self.cache_dir, stats)
        self.warmup_stats = {"drafter/warmup_s": time.perf_counter() - t0, "drafter/warmup_rollout_s": t1 - t0,
                             "drafter/warmup_features_s": t2 - t1, "drafter/warmup_train_s": stats.train_s,
                             "drafter/warmup_loss": stats.loss, "drafter/warmup_top1": stats.top1_agreement,
                             "drafter/warmup_steps": stats.steps}
        return self.warmup_stats

    # ------------------------------------------------------------------ in the step
    def begin_step(self) -> None:
        """Open this RL step's slot in the replay window; idle-window training only sees earlier steps."""
        self.drafter.new_step()
        self._idle = DrafterStats(0.0, 0.0, 0.0)
        if self.cfg.background:
            self.drafter.run(True)  # from the first step on (after the warm start, or after a resume)

    def idle_train(self) -> None:
        """Phase 2, once per RL step right after this rank's last rollout round. Several ranks: post an asynchronous
        all-reduce that completes when every rank has finished its rollout, and train until it does (every rank
        posts it once a step, also one with nothing to train: the collectives must match; once a step and not once a
        round, since with dynamic sampling ranks run different numbers of rounds). One rank: nothing (no one to wait
        for)."""
        if self.world_size == 1:
            return
        work = dist.all_reduce(torch.ones(1), async_op=True)
        if self.drafter.rows():
            self.drafter.set_policy_tensors(*self.policy_tensors())
            left = self.cfg.max_steps_per_update - self._idle.steps
            st = self.drafter.train(budget_s=float("inf"), max_steps=left, should_stop=work.is_completed)
            self._idle = self._idle.plus(st)
        work.wait()

    def step(self, engine, rows: list[DrafterBatch], spec: list[SpecStats] | None = None) -> dict:
        """Phase 8: the step's ``rows`` enter the replay window; one rank: the bounded training budget (background:
        collect what the worker trained meanwhile; ``drafter.train_when=drift``: only when ``spec``, the counters of
        the step's rollout calls, shows drift); several ranks: combine the idle-window updates. Then swap."""
        t0 = time.perf_counter()
        for b in rows:
            self.drafter.add(b)
        stats = self._idle
        if self.cfg.background:  # it trained while the step ran; from now on with the updated policy's tensors
            self.drafter.set_policy_tensors(*self.policy_tensors())
            self.export, stats = self.drafter.sync(self.folder / "current")
            engine.load_drafter(self.export)
            return self._after(stats, t0)
        if self.world_size == 1:
            if self.trigger is not None and not self.trigger.should_train(_accept_len(spec or [])):
                return self._after(DrafterStats(0.0, 0.0, 0.0), t0) | {"drafter/trained": 0.0}
            self.drafter.set_policy_tensors(*self.policy_tensors())
            stats = self.drafter.train(budget_s=self.cfg.budget_s, max_steps=self.cfg.max_steps_per_update)
        else:
            self.drafter.average_with(distributed.all_sum, float(stats.steps))
        self._swap(engine)
        return self._after(stats, t0) | {"drafter/trained": 1.0}

    # ------------------------------------------------------------------ after the last RL step
    def final_fit(self, engine) -> dict:
        """``drafter.final_steps`` optimizer steps on the replay window (the last steps' rollouts of the policy as it
        ends; in the foreground, also with ``background``), plus, with ``drafter.final_prompts``, fresh rollouts of
        that many training prompts by the final policy (each rank its strided share, the ones after the warm start's;
        the RL prompt stream is not touched; ``rollout.n`` each at the RL cap; the window grows to hold them), then
        swap, so the final evaluation, the last checkpoint and the export have a drafter fitted to the final policy.
        Several ranks: each fits on its own rows, then the drafters are averaged."""
        c, r = self.cfg, self.rollout_cfg
        t0 = time.perf_counter()
        late = 0
        if c.background:  # stop it, and count what it trained since the last step's swap
            self.drafter.run(False)
            late = self.drafter.collect().steps
        rows, rollout_s, features_s = 0, 0.0, 0.0
        if c.final_prompts:
            prompts = self._prompts(c.final_prompts, after=c.warmup_prompts)
            slots = -(-len(prompts) * r.n // c.max_rows_per_step)
            self.drafter.widen(c.replay_steps + slots)
            t = time.perf_counter()
            rows, t1, t2 = self._roll_into_window(engine, prompts, SamplingSpec(
                n=r.n, max_tokens=r.max_tokens, temperature=r.temperature, seed=self.seed * 7_717 + 29), slots)
            rollout_s, features_s = t1 - t, t2 - t1
        self.drafter.set_policy_tensors(*self.policy_tensors())
        stats, rounds = self._fit_while_it_gains() if c.final_min_gain > 0 else (
            self.drafter.train(budget_s=float("inf"), max_steps=c.final_steps), [])
        if self.world_size > 1:
            self.drafter.average_with(distributed.all_sum, float(stats.steps))
        self._swap(engine)
        self.final_stats = {"drafter/final_rounds_top1": rounds} if rounds else {}
        self.final_stats |= {"drafter/final_steps": late + stats.steps, "drafter/final_train_s": stats.train_s,
                            "drafter/final_top1": stats.top1_agreement, "drafter/final_rows": rows,
                            "drafter/final_rollout_s": rollout_s, "drafter/final_features_s": features_s,
                            "drafter/final_s": time.perf_counter() - t0}
        return self.final_stats

    def _fit_while_it_gains(self) -> tuple[DrafterStats, list[float]]:
        """``drafter.final_min_gain``: rounds of ``final_round_steps`` until a round's top-1 agreement rose by less
        than the gain over the round before (or ``final_steps`` are spent) -> (all rounds as one, each round's
        top-1). At least two rounds: the first is the level the comparison starts from."""
        c = self.cfg
        total, rounds = DrafterStats(0.0, 0.0, 0.0), []
        while total.steps < c.final_steps:
            steps = min(c.final_round_steps, c.final_steps - total.steps)
            s = self.drafter.train(budget_s=float("inf"), max_steps=steps)
            if not s.steps:
                break
            total = total.plus(s)
            rounds.append(s.top1_agreement)
            if len(rounds) > 1 and rounds[-1] - rounds[-2] < c.final_min_gain:
                break
        return total, rounds

    def summary(self, engine, eval_prompts: list[Prompt], step_metrics: list[dict]) -> dict:
        """``summary.json``'s ``drafter`` section: method, version, sampling mode, acceptance (engine-wide, and over
        the RL steps' rollouts only, from ``step_metrics``), the controller's per-bucket estimates, the warm start's
        and final fit's statistics, then the end-of-run speedup measured in the run's engine (after the estimates are
        read: these calls count in the engine's totals)."""
        c, r = self.cfg, self.rollout_cfg
        out = {"method": c.method, "version": self.drafter.version, "init": self.init_from or "warm start",
               "lossless": engine.lossless,
               "sampling": engine.spec_sampling, "mean_accept_len": engine.spec_total().mean_accept_len,
               "train_accept_len": train_accept_len(step_metrics),
               "speedup_by_batch": engine.controller.speedups()} | self.warmup_stats | self.final_stats
        t0 = time.perf_counter()
        measured = measure_speedup(engine, eval_prompts, c.report_batch_sizes, c.report_calls, r.max_tokens,
                                   r.temperature, self.seed)
        return out | {"measured_speedup": measured, "measured_max_tokens": r.max_tokens,
                      "measured_calls": c.report_calls, "measure_s": time.perf_counter() - t0}

    # ------------------------------------------------------------------ helpers
    def _prompts(self, count: int, after: int = 0) -> list[Prompt]:
        """``count`` training prompts for the drafter, outside the RL prompt stream: this rank's strided share of the
        training set, ``count // ranks`` of it (at least 1), starting after the first ``after`` (wrapping round)."""
        from trainers.data import to_prompts

        share = self.train_rows[self.rank::self.world_size]
        skip = max(1, after // self.world_size) if after else 0
        rows = (share[skip:] + share[:skip])[: max(1, count // self.world_size)]
        return to_prompts(rows, self.tokenizer, self.data_cfg)

    def _roll_into_window(self, engine, prompts: list[Prompt], spec: SamplingSpec,
                          slots: int = 1) -> tuple[int, float, float]:
        """Roll ``prompts`` out and add the trainer's features over them to the replay window, in ``slots`` new slots
        of up to ``drafter.max_rows_per_step`` rows (1: all in one, the slot keeping a random subset).
        -> (rows, time after the rollout, time after the features)."""
        batch = engine.generate(prompts, spec)
        t1 = time.perf_counter()
        self.drafter.new_step()
        rows = in_slot = 0
        for feats in rollout_features(self.policy.module, batch, self.micro_batch, self.pad_id, self.feature_layers,
                                      self.rollout_cfg.temperature):
            b = feats.to_drafter_batch()
            if slots > 1 and in_slot >= self.cfg.max_rows_per_step:
                self.drafter.new_step()
                in_slot = 0
            self.drafter.add(b)
            in_slot += b.token_ids.shape[0]
            rows += b.token_ids.shape[0]
        return rows, t1, time.perf_counter()

    def _after(self, stats: DrafterStats, t0: float) -> dict:
        # overhead: one rank: training (background: the wait for its step in progress) + export + swap; several:
        # averaging + swap
        return drafter_metrics(stats, time.perf_counter() - t0, self.drafter.version)

    def _swap(self, engine) -> None:
        self.export = self.drafter.export(self.folder / "current")
        engine.load_drafter(self.export)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        state = self.drafter.state_dict() | {"warmup_stats": self.warmup_stats, "started_from": self.init_from}
        if self.trigger is not None:
            state["drift_reference"], state["drift_floor"] = self.trigger.reference, self.trigger.floor
        return state

    def load_state_dict(self, state: dict, engine) -> None:
        if self.trigger is not None:
            self.trigger.reference = state.get("drift_reference")
            self.trigger.floor = float(state.get("drift_floor", 0.0))
        self.drafter.load_state_dict(state)
        # the run's own warm start and start stay in its summary: a resumed run does not warm-start again (and with
        # drafter.init=cache it finds the cache its first part built)
        self.warmup_stats = state.get("warmup_stats", self.warmup_stats)
        self.init_from = state.get("started_from", self.init_from)
        self._swap(engine)

    def close(self) -> None:
        """Stop the background drafter's process (nothing to do for the others)."""
        if self.cfg.background:
            self.drafter.close()


def _accept_len(calls: list[SpecStats]) -> float:
    """Mean acceptance length over a rank's rollout calls (0 when none speculated)."""
    return SpecStats(drafts=sum(c.drafts for c in calls), accepted_tokens=sum(c.accepted_tokens for c in calls)
                     ).mean_accept_len


# the settings that decide what the warm start trains: a cached drafter is reused only when all of them match
_WARM_KEYS = {"drafter": ("method", "num_speculative_tokens", "lr", "cls_weight", "train_depth", "train_chains",
                          "reg_weight", "batch_rows", "max_rows_per_step", "train_vocab", "warmup_steps",
                          "warmup_prompts", "warmup_max_tokens", "draft_layers", "draft_hidden"),
              "rollout": ("n", "max_tokens", "temperature", "top_p"),
              "data": ("task", "seed", "rg_config", "n_train", "train_file", "train_rows", "prompt_template",
                       "chat_template", "system_prompt"),
              "run": ("seed",)}


def drafter_cache_dir(cfg: Config, policy_path: str, world_size: int) -> Path:
    """``$LACONIC_CACHE/drafters/<base model folder>-<key>``: the key hashes the base model (its folder, config and
    weights' size and time) and every setting the warm start depends on (:data:`_WARM_KEYS`, the rank count)."""
    import hashlib
    from dataclasses import asdict

    from recipes.tasks.cache import cache_root

    policy = Path(policy_path).resolve()
    weights = policy / "model.safetensors"
    ident = {"policy": str(policy), "config": (policy / "config.json").read_text(), "ranks": world_size,
             "weights": [weights.stat().st_size, weights.stat().st_mtime_ns] if weights.exists() else None}
    for section, keys in _WARM_KEYS.items():
        values = asdict(getattr(cfg, section))
        ident[section] = {k: values[k] for k in keys}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return cache_root() / "drafters" / f"{policy.name}-{key}"


def save_to_cache(export_dir: str, cache: Path, stats: DrafterStats) -> None:
    """Publish the warm-started drafter at ``cache`` atomically (a copy, then a rename; ``COMPLETE`` last)."""
    import os
    import shutil

    from recipes.tasks.cache import build_lock

    with build_lock("drafter"):
        if (cache / "COMPLETE").is_file():
            return
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(export_dir, tmp)
        (tmp / "warm_start.json").write_text(json.dumps({"steps": stats.steps, "loss": stats.loss,
                                                         "top1": stats.top1_agreement, "train_s": stats.train_s}))
        (tmp / "COMPLETE").write_text("")
        shutil.rmtree(cache, ignore_errors=True)
        os.replace(tmp, cache)


@torch.no_grad()
def rollout_features(model: torch.nn.Module, batch, micro_batch: int, pad_id: int = 0,
                     aux_layers: tuple[int, ...] = (), temperature: float = 1.0):
    """The trainer's forward (no grad) over a rollout batch, micro-batch by micro-batch -> ``Features`` each (with
    the residual stream after each of ``aux_layers`` layers)."""
    from trainers.backend.logprobs import completion_logprobs

    ids = [batch.prompts[int(i)].token_ids for i in batch.prompt_index]
    model.eval()
    for s in range(0, len(ids), micro_batch):
        yield completion_logprobs(model, ids[s:s + micro_batch], batch.completion_ids[s:s + micro_batch],
                                  batch.completion_mask[s:s + micro_batch], pad_id, temperature,
                                  aux_layers=aux_layers)[2]


def fit_on_rollouts(drafter: OnlineDrafter, model: torch.nn.Module, batch, steps: int, micro_batch: int = 32,
                    temperature: float = 1.0) -> DrafterStats:
    """Warm a drafter on a rollout batch of ``model`` (features from its forward) for ``steps`` optimizer steps:
    the trainer's warm start, outside the trainer (benchmarks, tests)."""
    drafter.new_step()
    for feats in rollout_features(model, batch, micro_batch, aux_layers=drafter.feature_layers,
                                  temperature=temperature):
        drafter.add(feats.to_drafter_batch())
    return drafter.train(budget_s=float("inf"), max_steps=steps)


def lookup_summary(cfg: Config, engine, eval_prompts: list[Prompt], step_metrics: list[dict]) -> dict:
    """``summary.json``'s ``drafter`` section for lookup drafts (``drafter.method=lookup``): what
    :meth:`DrafterPhase.summary` reports of a trained drafter, less what a lookup has not (version, warm start, final
    fit)."""
    c, r = cfg.drafter, cfg.rollout
    out = {"method": "lookup", "lossless": engine.lossless, "sampling": engine.spec_sampling,
           "lookup_n": [r.lookup_min_n, r.lookup_max_n], "mean_accept_len": engine.spec_total().mean_accept_len,
           "train_accept_len": train_accept_len(step_metrics), "speedup_by_batch": engine.controller.speedups()}
    t0 = time.perf_counter()
    measured = measure_speedup(engine, eval_prompts, c.report_batch_sizes, c.report_calls, r.max_tokens,
                               r.temperature, cfg.run.seed)
    return out | {"measured_speedup": measured, "measured_max_tokens": r.max_tokens, "measured_calls": c.report_calls,
                  "measure_s": time.perf_counter() - t0}


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


def train_accept_len(step_metrics: list[dict]) -> float:
    """Mean acceptance length (bonus token counted) over the RL steps' rollouts only, from their ``spec/*`` metrics
    (a resumed run's earlier steps included); the engine-wide ``mean_accept_len`` also pools the warm start, the
    evaluations (longer cap) and the final fit's rollouts."""
    rows = [m for m in step_metrics if "spec/drafts" in m]
    return SpecStats(drafts=sum(m["spec/drafts"] for m in rows),
                     accepted_tokens=sum(m["spec/accepted_tokens"] for m in rows)).mean_accept_len
