"""The RL loop: group-sampled policy optimisation (GRPO family) and PPO with a colocated vLLM engine on DeepSpeed.

One step is :meth:`Trainer.train_step`, phase by phase (the numbering used everywhere):

1 roll out     each rank samples ``rollout.n`` completions for its share of ``trainer.prompts_per_step`` prompts and
               scores them (``rewards.compute``); with dynamic sampling, round after round (:mod:`trainers.sampling`)
2 idle window  with a drafter and several ranks: a rank done with its rollout trains the drafter until every rank
               is done (:mod:`trainers.drafting`)
3 select       the groups the rank trains on: dynamic sampling's kept groups, the DECS curriculum's share, fillers;
               with several ranks every rank's groups dealt out again to near-equal tokens (``trainer.balance_ranks``)
4 forward      without grad, what the configuration needs: the trainer's log-probs of the sampling policy, the
               reference's, the critic's values, sampler-mismatch weights; its hidden states are the drafter's rows
               (:mod:`trainers.update`)
5 advantage    ``ADVANTAGE[algo.advantage]`` on the rewards (minus the KL penalty when it is in the reward); returns
               for the critic; optional batch whitening (:mod:`trainers.algo`)
6 update       policy (and critic) optimizer steps on DeepSpeed; knows no algorithm; returns the step's metric sums
7 sync         the policy's weights (LoRA merged, ZeRO-3 gathered in buckets) -> ``VLLMEngine.load_policy``
8 drafter      the step's rows into the replay window, training (one rank) or averaging (several), export, hot swap
9 log          one reduction per step (:mod:`trainers.metrics`) -> metrics.jsonl, W&B, progress bar

Simplification: with one epoch and one mini-batch the update starts on-policy (ratio 1) and the trainer's own
forward of the update provides the behaviour log-probs; vLLM's log-probs serve only the mismatch diagnostics and,
when enabled, its correction.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import rewards
from rewards import RewardOutput
from rollout.types import RolloutBatch
from trainers.algo.advantages import ADVANTAGE, boost_correct, dense_rewards, masked_whiten
from trainers.algo.losses import KL
from trainers.algo.types import AdvantageInput
from trainers.backend import distributed
from trainers.config import Config
from trainers.data import to_prompts
from trainers.evaluation import evaluate
from trainers.metrics import StepContext, Timers, batch_time_metrics, spec_metrics, step_metrics
from trainers.run import checkpoint, console
from trainers.sampling import Sample, Sampler
from trainers.types import TaskData
from trainers.update import Forward, Rows, Updater

__all__ = ["Trainer", "TaskData"]


class NonFiniteLoss(RuntimeError):
    """trainer.max_nonfinite_steps steps in a row had a NaN/inf loss."""


class StorageError(RuntimeError):
    """A checkpoint or run file could not be written (disk full, unwritable folder)."""


class Trainer:
    def __init__(self, cfg: Config, model_path: str, task: TaskData, config_yaml: str,
                 local_rank: int | None = None) -> None:
        from transformers import AutoTokenizer

        from rollout.vllm_engine import VLLMEngine
        from trainers.backend.engine import TrainEngine, critic_optim, policy_optim
        from trainers.backend.models import Reference, load_critic, load_policy
        from trainers.run.runlog import RunFolder
        from trainers.run.tracking import Tracker

        self.cfg, self.task = cfg, task
        self.d = distributed.init(cfg.deepspeed.backend, local_rank)
        self.run = RunFolder(_run_dir(cfg))
        console.attach(self.run.path, self.d.rank)  # third-party output of this rank -> the run folder's log
        if self.d.is_main:
            self.run.write_config(config_yaml)
        torch.manual_seed(cfg.run.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        t = cfg.trainer
        rows = t.prompts_per_step // self.d.world_size * cfg.rollout.n
        grad_accum = rows // t.mini_batches // t.micro_batch_size
        self.policy = TrainEngine(load_policy(model_path, cfg).to(self.d.device), policy_optim(cfg), cfg,
                                  self.d.world_size, grad_accum)
        self.critic = None
        if cfg.algo.advantage == "gae":
            self.critic = TrainEngine(load_critic(model_path, cfg).to(self.d.device), critic_optim(cfg), cfg,
                                      self.d.world_size, grad_accum)
        reference = Reference(model_path, cfg, self.d.device, self.policy.module) if cfg.algo.kl_coef > 0 else None
        self.drafting = None
        lookup = cfg.drafter.enabled and cfg.drafter.method == "lookup"  # drafts need no head: nothing to train
        if cfg.drafter.enabled and not lookup:
            from trainers.drafting import DrafterPhase

            self.drafting = DrafterPhase(cfg, model_path, self.policy, self.run.path / "drafter" / f"rank{self.d.rank}",
                                         self.d.rank, self.d.world_size, task.train, self.tokenizer, self.pad_id)
        self.updater = Updater(cfg, self.policy, self.pad_id, self.critic, reference,
                               want_features=self.drafting is not None,
                               feature_layers=self.drafting.feature_layers if self.drafting else ())
        drafter = self.drafting.export if self.drafting else None
        if lookup:
            from drafters.types import DrafterExport

            drafter = DrafterExport("lookup", cfg.drafter.num_speculative_tokens, "", 0)
        self.rollout = VLLMEngine(model_path, cfg.rollout, seed=cfg.run.seed, drafter=drafter)
        if cfg.logging.progress and self.d.is_main:  # a bar per rollout and evaluation, on the terminal
            self.rollout.show_progress = console.progress_bar
        self.sampler = Sampler(cfg, self.rollout, self.tokenizer, to_prompts(task.train, self.tokenizer, cfg.data),
                               self.d.rank, self.d.world_size)
        self.eval_prompts = to_prompts(task.eval, self.tokenizer, cfg.data)
        self.tracker = Tracker(cfg.logging, str(self.run.path), self.run.path.name,
                               json.loads(json.dumps(asdict(cfg), default=str)), enabled=self.d.is_main)
        self.step, self.tokens_total, self.version, self.wall_prior = 0, 0, 0, 0.0
        self.evals: list[dict] = []
        self.sync_stats: dict = {}
        self.maybe_resume()

    @property
    def engines(self) -> dict:
        return {"policy": self.policy} | ({"critic": self.critic} if self.critic is not None else {})

    # ------------------------------------------------------------------ the step
    def train_step(self, step: int) -> dict:
        """One RL step, its phases numbered as in the module docstring."""
        timers, drafter = Timers(), self.drafting
        with timers("step"):
            if drafter is not None:
                drafter.begin_step()
            rounds = self.sampler.roll_out(step, timers)  # 1 roll out
            if drafter is not None:
                with timers("idle"):
                    drafter.idle_train()  # 2 idle-window drafter work
            sample = self.sampler.select(rounds)  # 3 select
            if self.cfg.trainer.balance_ranks and self.d.world_size > 1:
                sample = self.sampler.balance(sample)  # the groups dealt out again: near-equal tokens per rank
            rows = _rows(sample.batch)
            with timers("forward"):
                fwd = self.updater.forward(rows, timers)  # 4 forward
            with timers("advantage"):
                adv, returns = self.advantage_phase(sample.batch, sample.rewards, fwd)  # 5 advantage
            with timers("update"):
                upd = self.updater.update(rows, adv, returns, fwd, skip=_nonfinite(sample.rewards, adv))  # 6 update
            with timers("sync"):
                self.sync_phase()  # 7 sync
            drafter_stats = {}
            if drafter is not None:
                with timers("drafter"):
                    drafter_stats = drafter.step(self.rollout, fwd.features or upd.features or [],
                                                 sample.spec)  # 8 drafter
        return self.log_phase(step, sample, upd.sums, timers, drafter_stats)  # 9 log

    def advantage_phase(self, batch: RolloutBatch, rewards: RewardOutput,
                        fwd: Forward) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> advantages [B,T] and, with a critic, returns [B,T] (= raw advantages + values, before whitening)."""
        a = self.cfg.algo
        inp = AdvantageInput(rewards=rewards.total, group_ids=batch.group_ids, mask=batch.completion_mask,
                             token_rewards=rewards.token_rewards, values=fwd.values, all_sum=distributed.all_sum)
        if a.kl_in_reward and fwd.ref_logprobs is not None:
            penalty = a.kl_coef * KL.get_or_raise(a.kl_estimator, "algo.kl_estimator")(
                fwd.old_logprobs, fwd.ref_logprobs) * batch.completion_mask  # [B,T]
            inp = replace(inp, rewards=rewards.total - penalty.sum(-1),
                          token_rewards=(dense_rewards(inp) - penalty).to(torch.float32))
        adv = ADVANTAGE.get_or_raise(a.advantage, "algo.advantage")(inp, a)
        returns = adv + fwd.values if fwd.values is not None else None
        if a.whiten_advantages:
            adv = masked_whiten(adv, batch.completion_mask, distributed.all_sum).to(torch.float32)
        if a.correct_boost > 0:
            if rewards.score is None:
                raise ValueError("algo.correct_boost needs the rewards' pre-penalty score (RewardOutput.score)")
            adv = boost_correct(adv, rewards.score, batch.completion_mask, a.correct_boost, a.correct_boost_threshold)
        return adv, returns

    def sync_phase(self) -> None:
        self.version += 1
        self.rollout.load_policy(self.policy.iter_hf_weights(), self.version)
        every = self.cfg.trainer.sync_check_every
        if every and self.version % every == 0:
            self.sync_stats = self.check_sync()

    def check_sync(self) -> dict:
        """The engine must now decode exactly like the trainer: vLLM's greedy completion of a few held-out prompts
        has to be the trainer's argmax at every token (teacher-forced, so it also works under ZeRO-3) and its
        log-probs have to match. A mismatch raises: training on a stale or garbled engine is never silent."""
        from rollout.types import SamplingSpec
        from trainers.backend.logprobs import greedy_agreement

        probes = self.eval_prompts[: self.cfg.trainer.sync_check_prompts]
        with self.rollout.controller_paused():  # greedy probes: not the rollouts' traffic
            batch = self.rollout.generate(probes, SamplingSpec(n=1, max_tokens=min(64, self.cfg.rollout.max_tokens),
                                                               temperature=0.0))
        r = _rows(batch)
        was_training = self.policy.module.training
        self.policy.module.eval()
        ok, lp = greedy_agreement(self.policy.module, r.prompt_ids, r.completion_ids, r.mask, self.pad_id)
        self.policy.module.train(was_training)
        out = {"sync/greedy_match": float(ok.float().mean())}
        if batch.sampler_logprobs is not None:
            out["sync/logprob_max_diff"] = float((lp.cpu() - batch.sampler_logprobs[r.mask]).abs().max())
        if not bool(ok.all()):
            raise RuntimeError(f"weight sync check failed at policy version {self.version} on rank {self.d.rank}: "
                               f"vLLM's greedy token is not the trainer's argmax at {int((~ok).sum())} of {ok.numel()} "
                               f"positions ({out})")
        return out

    def log_phase(self, step: int, sample: Sample, sums, timers: Timers, drafter_stats: dict) -> dict:
        t = self.cfg.trainer
        ctx = StepContext(step=step + 1, epoch=self.sampler.stream.epoch, world_size=self.d.world_size,
                          optimizer_steps=float(t.epochs * t.mini_batches), policy_lr=self.policy.lr(),
                          policy_version=self.version, has_reference=self.updater.reference is not None,
                          critic_lr=self.critic.lr() if self.critic is not None else None)
        m, generated = step_metrics(ctx, sample, sums, timers)
        self.tokens_total += int(generated)
        m |= sample.stats | self.sync_stats | drafter_stats | batch_time_metrics(sample.timing)
        if self.rollout.drafter is not None:
            m |= spec_metrics(sample.spec)
        return m

    # ------------------------------------------------------------------ the run
    def evaluate(self, step: int) -> dict:
        samples: list[dict] = []
        m = evaluate(self.rollout, self.eval_prompts, self.cfg, self.d.rank, self.d.world_size, samples)
        rec = {"step": step, "dataset": self.task.name} | m
        if self.d.is_main:
            self.run.log_eval(rec)
            self.tracker.log(m, step)
            self.tracker.log_samples("eval/samples", samples, step)
        self.evals.append(rec)
        return rec

    def fit(self) -> dict:
        try:
            return self._fit()
        finally:
            if self.drafting is not None:
                self.drafting.close()

    def _fit(self) -> dict:
        t, start = self.cfg.trainer, time.perf_counter()
        self._fit_start = start
        if t.stop_at and self.step >= t.stop_at:
            raise ValueError(f"trainer.stop_at={t.stop_at}: the run resumed at step {self.step}, already past it; set "
                             "a later trainer.stop_at, or 0 to run to trainer.max_steps")
        if not self.evals:  # a resumed run already has its "before" evaluation (and its drafter)
            if self.drafting is not None:
                warm = self.drafting.warm_start(self.rollout)
                if self.d.is_main:
                    self.tracker.log(warm, 0)
            self.evaluate(self.step)
        bar = _progress(self.cfg, self.d.is_main, self.step)
        nonfinite_streak = 0
        for step in range(self.step, t.max_steps):
            m = self.train_step(step)
            self.step = step + 1
            skipped = m["train/nonfinite"] > 0  # a NaN/inf loss: that optimizer step ran at lr 0 (weights unchanged)
            nonfinite_streak = nonfinite_streak + 1 if skipped else 0
            if self.d.is_main:
                self.run.log_metrics(m)
                self.tracker.log(m, self.step)
                _update_bar(bar, m)
            if nonfinite_streak >= t.max_nonfinite_steps:
                good = checkpoint.complete_checkpoints(self.run.checkpoints)
                raise NonFiniteLoss(
                    f"the loss, a reward or an advantage was NaN/inf in {nonfinite_streak} steps in a row (steps {self.step - nonfinite_streak + 1}"
                    f"-{self.step}; trainer.max_nonfinite_steps={t.max_nonfinite_steps}); their updates were skipped. "
                    f"Stopping: the newest good checkpoint is "
                    f"{good[-1][1] if good else 'none (no checkpoint was written yet)'}; metrics of the skipped "
                    f"steps are in {self.run.path / 'metrics.jsonl'}. Common causes: a reward term returning NaN, "
                    "a learning rate too high.")
            if t.eval_every and self.step % t.eval_every == 0 and self.step != t.max_steps:
                self.evaluate(self.step)
            if t.stop_at and self.step == t.stop_at:
                return self.stop(bar)
            if t.save_every and self.step % t.save_every == 0 and self.step != t.max_steps and not skipped:
                self.save()
        if bar is not None:
            bar.close()
        if self.drafting is not None and self.cfg.drafter.final_steps:
            final = self.drafting.final_fit(self.rollout)
            if self.d.is_main:
                self.tracker.log(final, self.step)
        self.evaluate(self.step)
        self.save()
        return self.finish(self.wall_prior + time.perf_counter() - start)

    def stop(self, bar) -> dict:
        """``trainer.stop_at``: a checkpoint of this step and nothing of the run's end; -> ``{"stopped_at", "wall_s",
        "checkpoint"}`` (``wall_s``: the run's time in fit so far, resumed parts included)."""
        if bar is not None:
            bar.close()
        path = self.save()
        if self.d.is_main:
            self.tracker.finish()
        distributed.barrier()
        return {"stopped_at": self.step, "wall_s": self.wall_prior + time.perf_counter() - self._fit_start,
                "checkpoint": str(path)}

    def maybe_resume(self) -> None:
        """``run.resume``: "auto" = newest complete checkpoint in the run folder (none: start fresh), or a path.
        Restores weights, optimizer, RNG, data cursors, reward and curriculum states, drops metrics logged after the
        checkpoint, and pushes the restored weights into the engine."""
        ckpt = checkpoint.resolve(self.cfg.run.resume, self.run.checkpoints)
        if ckpt is None:
            return
        state = checkpoint.load(self.engines, ckpt)
        self.step, self.tokens_total, self.wall_prior = state["step"], state["tokens_total"], state["wall_s"]
        self.sampler.load_state_dict(state["samplers"][self.d.rank])
        self.rollout.load_state_dict(state["engines"][self.d.rank])
        if self.drafting is not None:
            self.drafting.load_state_dict(torch.load(ckpt / "drafter.pt", weights_only=False), self.rollout)
        if self.d.is_main:
            self.run.truncate_after(self.step)
        distributed.barrier()
        self.evals = [e for e in self.run.read_jsonl("eval.jsonl") if e["step"] <= self.step]
        self.version = state["version"] - 1
        self.sync_phase()
        if self.d.is_main:
            console.say(f"resumed from {ckpt} at step {self.step}")

    def save(self) -> Path:
        elapsed = time.perf_counter() - self._fit_start if hasattr(self, "_fit_start") else 0.0
        state = {"step": self.step, "version": self.version, "tokens_total": self.tokens_total,
                 "wall_s": self.wall_prior + elapsed,
                 "samplers": distributed.gather_objects(self.sampler.state_dict()),  # one per rank
                 "engines": distributed.gather_objects(self.rollout.state_dict())}  # speculation statistics
        files = {"drafter.pt": self.drafting.state_dict()} if self.drafting is not None else {}
        # hf/ makes every checkpoint exportable (launch.py export step=N); every rank takes part in the ZeRO-3
        # gathers, rank 0 keeps the tensors
        weights = {k: v for k, v in self.policy.iter_hf_weights() if self.d.is_main}
        try:
            return checkpoint.save(self.engines, self.run.checkpoints, self.step, state, self.cfg.trainer.keep_last,
                                   self.d.is_main, files, writers={"hf": lambda path: self.export(path, weights)})
        except Exception as e:  # disk full (torch.save raises RuntimeError, plain writes OSError), quota, folder gone
            checkpoint.discard_partial(self.run.checkpoints, self.step)
            good = checkpoint.complete_checkpoints(self.run.checkpoints)
            raise StorageError(f"could not write checkpoint step_{self.step} into {self.run.checkpoints}: "
                               f"{type(e).__name__}: {e}. "
                               f"Nothing earlier was touched: the newest complete checkpoint is "
                               f"{good[-1][1] if good else 'none'}; free space and resume with run.resume=auto") from e

    def finish(self, wall_s: float) -> dict:
        before, after = self.evals[0], self.evals[-1]
        keys = ("eval/acc", "eval/len_mean", "eval/len_median", "eval/len_p90", "eval/len_max",
                "eval/truncated_frac", "eval/tokens_per_correct")
        keys += tuple(k for k in ("eval/target_err",) if k in before and k in after)  # LCPO: length adherence
        summary = {"before": {"step": before["step"]} | {k: before[k] for k in keys},
                   "after": {"step": after["step"]} | {k: after[k] for k in keys},
                   "totals": {"steps": self.step, "wall_s": wall_s, "rollout_tokens": self.tokens_total,
                              "ranks": self.d.world_size, "engine_start_s": self.rollout.start_s}}
        if self.drafting is not None:
            steps = [m for m in self.run.read_jsonl("metrics.jsonl") if m["step"] <= self.step]
            summary["drafter"] = self.drafting.summary(self.rollout, self.eval_prompts, steps)
        elif self.rollout.drafter is not None:  # lookup drafts
            from trainers.drafting import lookup_summary

            steps = [m for m in self.run.read_jsonl("metrics.jsonl") if m["step"] <= self.step]
            summary["drafter"] = lookup_summary(self.cfg, self.rollout, self.eval_prompts, steps)
        weights = dict(self.policy.iter_hf_weights())  # every rank takes part in the ZeRO-3 gathers
        if self.d.is_main:
            self.run.write_summary(summary)
            if self.sampler.states:  # every rank holds the same states (updates are gathered every round)
                self.run.write_reward_history(rewards.history(self.sampler.states))
            self.export(self.run.path / "export", weights)
            self.report()
            self.tracker.finish()
        distributed.barrier()
        return summary

    def report(self) -> None:
        """The before/after Pareto plot (run folder and W&B) and the model card of ``export/``."""
        from trainers.cli.export import write_card
        from trainers.run.plots import eval_points, pareto_plot

        plot = pareto_plot(eval_points(self.evals), self.run.path / "pareto.png",
                           title=f"{self.run.path.name}: held-out accuracy vs tokens")
        self.tracker.log_image("eval/pareto", str(plot), self.step)
        write_card(self.run.path / "export", self.run.path)

    def export(self, out: Path, weights: dict[str, torch.Tensor]) -> None:
        """HF-format policy (LoRA merged) + tokenizer, from the full HF-named weights."""
        from trainers.backend.weights import hf_root

        hf_root(self.policy.module).save_pretrained(out, state_dict=weights, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        if self.drafting is not None:
            self.drafting.drafter.export(out / "drafter")  # beside the model, in the layout vLLM loads


def _nonfinite(rewards: RewardOutput, adv: torch.Tensor) -> bool:
    """NaN/inf in a reward (a user term) or an advantage on any rank: no update from this step on any rank (counted
    in train/nonfinite like a non-finite loss), instead of letting group statistics quietly zero it."""
    bad = [rewards.total, adv] + ([rewards.token_rewards] if rewards.token_rewards is not None else [])
    flag = torch.tensor([0.0 if all(bool(torch.isfinite(x).all()) for x in bad) else 1.0])
    return bool(distributed.all_sum(flag)[0] > 0)


def _rows(batch: RolloutBatch) -> Rows:
    return Rows([batch.prompts[int(i)].token_ids for i in batch.prompt_index], batch.completion_ids,
                batch.completion_mask, batch.sampler_logprobs)


def _run_dir(cfg: Config) -> Path:
    """``run.output_dir``, or ``runs/<recipe>-<timestamp>`` chosen by rank 0 and shared with every rank."""
    if cfg.run.output_dir:
        return Path(cfg.run.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(distributed.gather_objects(f"runs/{cfg.recipe}-{stamp}")[0])


def _progress(cfg: Config, is_main: bool, initial: int):
    if not (cfg.logging.progress and is_main):
        return None
    return console.progress_bar(total=cfg.trainer.max_steps, initial=initial, desc="rl", unit="step",
                                dynamic_ncols=True)


def _update_bar(bar, m: dict) -> None:
    if bar is None:
        return
    bar.set_postfix(acc=f"{m['acc/mean']:.2f}", len=f"{m['len/mean']:.0f}", reward=f"{m['reward/mean']:.2f}",
                    s=f"{m['time/step_s']:.1f}")
    bar.update(1)
