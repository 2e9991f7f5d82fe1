"""The RL loop: group-sampled policy optimisation (GRPO family) and PPO with a colocated vLLM engine on DeepSpeed.

One step, read top to bottom in :meth:`Trainer.train_step`:

1. sample    each rank samples ``rollout.n`` completions for its share of ``trainer.prompts_per_step`` prompts and
             scores them (``rewards.compute``); dynamic sampling and the DECS curriculum pick the groups it keeps
             (:mod:`trainers.sampling`)
2. forward   what the configuration needs, without grad: the trainer's own log-probs of the sampling policy, the
             reference's, the critic's values, sampler-mismatch weights (:mod:`trainers.update`)
3. advantage ``ADVANTAGE[algo.advantage]`` on the rewards (minus the KL penalty when it is in the reward); returns
             for the critic; optional batch whitening
4. update    policy (and critic) optimizer steps on DeepSpeed; the update knows no algorithm
5. sync      the policy's weights (LoRA merged, ZeRO-3 gathered in buckets) -> ``VLLMEngine.load_policy``
6. log       one reduction per step -> metrics.jsonl, W&B, progress bar

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

from rewards import RewardOutput
from rollout.types import RolloutBatch, SpecStats
from trainers import checkpoint, distributed
from trainers.advantages import ADVANTAGE, dense_rewards, masked_whiten
from trainers.config import Config
from trainers.data import to_prompts
from trainers.drafting import measure_speedup, spec_metrics
from trainers.evaluation import evaluate
from trainers.losses import KL
from trainers.metrics import Timers, length_stats
from trainers.sampling import Sampler
from trainers.types import AdvantageInput, TaskData
from trainers.update import SUM_KEYS, Forward, Rows, Updater

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
        from trainers.engine import TrainEngine, critic_optim, policy_optim
        from trainers.models import Reference, load_critic, load_policy
        from trainers.runlog import RunFolder
        from trainers.tracking import Tracker

        self.cfg, self.task = cfg, task
        self.d = distributed.init(cfg.deepspeed.backend, local_rank)
        self.run = RunFolder(_run_dir(cfg))
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
        if cfg.drafter.enabled:
            from trainers.drafting import DrafterPhase

            self.drafting = DrafterPhase(cfg.drafter, model_path, self.policy, cfg.rollout.temperature,
                                         self.run.path / "drafter" / f"rank{self.d.rank}", cfg.run.seed,
                                         self.d.world_size)
        self.updater = Updater(cfg, self.policy, self.pad_id, self.critic, reference,
                               on_features=self.drafting.add_features if self.drafting else None)
        self.rollout = VLLMEngine(model_path, cfg.rollout, seed=cfg.run.seed,
                                  drafter=self.drafting.export if self.drafting else None)
        self.rollout.show_progress = cfg.logging.progress and self.d.is_main  # a bar per rollout and evaluation
        self.sampler = Sampler(cfg, self.rollout, self.tokenizer, to_prompts(task.train, self.tokenizer, cfg.data),
                               self.d.rank, self.d.world_size)
        if self.drafting is not None:
            self.sampler.after_rollout = self.drafting.idle_train
        self.eval_prompts = to_prompts(task.eval, self.tokenizer, cfg.data)
        self.tracker = Tracker(cfg.logging, str(self.run.path), self.run.path.name,
                               json.loads(json.dumps(asdict(cfg), default=str)), enabled=self.d.is_main)
        self.step, self.tokens_total, self.version, self.wall_prior = 0, 0, 0, 0.0
        self.evals: list[dict] = []
        self.sync_stats: dict = {}
        self.warmup_stats: dict = {}
        self.final_drafter_stats: dict = {}
        self.maybe_resume()

    @property
    def engines(self) -> dict:
        return {"policy": self.policy} | ({"critic": self.critic} if self.critic is not None else {})

    # ------------------------------------------------------------------ the step
    def train_step(self, step: int) -> dict:
        timers = Timers()
        drafter_stats: dict = {}
        with timers("step"):
            if self.drafting is not None:
                self.drafting.begin_step()
            sample = self.sampler.sample(step, timers)
            rows = _rows(sample.batch)
            with timers("forward"):
                fwd = self.updater.forward(rows, timers)
            with timers("advantage"):
                adv, returns = self.advantage_phase(sample.batch, sample.rewards, fwd)
            # NaN/inf in a reward (a user term) or an advantage: no update from this step on any rank (counted in
            # train/nonfinite like a non-finite loss), instead of letting group statistics quietly zero it
            bad = [sample.rewards.total, adv] + ([sample.rewards.token_rewards]
                                                 if sample.rewards.token_rewards is not None else [])
            flag = torch.tensor([0.0 if all(bool(torch.isfinite(x).all()) for x in bad) else 1.0])
            with timers("update"):
                sums = self.updater.update(rows, adv, returns, fwd, skip=bool(distributed.all_sum(flag)[0] > 0))
            with timers("sync"):
                self.sync_phase()
            if self.drafting is not None:
                with timers("drafter"):
                    drafter_stats = self.drafting.after_update(self.rollout) | spec_metrics(sample.spec)
        return self.log_phase(step, sample, sums, timers) | sample.stats | self.sync_stats | drafter_stats

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
        from trainers.logprobs import greedy_agreement

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

    def log_phase(self, step: int, sample, sums: dict, timers: Timers) -> dict:
        batch, rewards = sample.batch, sample.rewards
        rows = torch.stack([batch.num_tokens.to(torch.float64), rewards.total.to(torch.float64),
                            rewards.correct.to(torch.float64), batch.truncated.to(torch.float64)], -1)
        rows = distributed.all_gather_rows(rows)  # [B_global, 4]
        s = dict(zip(SUM_KEYS, distributed.all_sum(torch.tensor([sums[k] for k in SUM_KEYS],
                                                                 dtype=torch.float64)).tolist()))
        prompt_tokens = sum(len(batch.prompts[int(i)].token_ids) for i in batch.prompt_index)
        gen, rollout_s, step_s, processed = distributed.all_sum(torch.tensor(
            [float(sample.generated_tokens), timers.seconds["rollout"], timers.seconds["step"],
             float(prompt_tokens + int(batch.num_tokens.sum()))], dtype=torch.float64)).tolist()
        w, n_opt = self.d.world_size, float(self.cfg.trainer.epochs * self.cfg.trainer.mini_batches)
        tok = max(s["tokens"], 1.0)
        self.tokens_total += int(gen)
        m = {"step": step + 1, "epoch": self.sampler.stream.epoch} | timers.as_metrics()
        m |= {"reward/mean": float(rows[:, 1].mean()), "reward/std": float(rows[:, 1].std()),
              "acc/mean": float(rows[:, 2].mean())}
        m |= {f"reward/{k}": float(distributed.all_sum(v.to(torch.float64).sum().reshape(1))[0]) / rows.shape[0]
              for k, v in rewards.terms.items()}
        errors = rewards.errors if rewards.errors is not None else torch.zeros(len(batch.num_tokens), dtype=torch.bool)
        m["reward/errors"] = int(distributed.all_sum(errors.to(torch.float64).sum().reshape(1))[0])  # failed calls
        m |= length_stats(rows[:, 0], "len/")
        m |= {"len/truncated_frac": float(rows[:, 3].mean()), "rollout/tokens_per_s": gen / max(rollout_s / w, 1e-9),
              "rollout/sequences": rows.shape[0], "rollout/tokens": float(rows[:, 0].sum()),
              "rollout/generated_tokens": gen, "perf/tokens_per_s": processed / max(step_s, 1e-9),  # verl: tokens / (step time x ranks)
              "train/loss": s["loss"] / n_opt, "train/entropy": s["entropy"] / tok,
              "train/clip_frac": s["clip_frac"] / tok, "train/grad_norm": s["grad_norm"] / n_opt / w,
              "train/lr": self.policy.lr(), "policy_version": self.version,
              "train/nonfinite": int(max(s["nonfinite"], s["critic_nonfinite"]))}  # skipped optimizer steps (NaN/inf)
        if batch.sampler_logprobs is not None:
            m |= {"train/sampler_kl": s["sampler_kl"] / tok, "train/mismatch_ratio": s["mismatch_ratio"] / tok,
                  "train/is_kept_frac": s["kept_tokens"] / tok}
        if self.updater.reference is not None:
            m["train/ref_kl"] = s["ref_kl"] / tok
        if self.critic is not None:
            m |= {"critic/vf_loss": s["vf_loss"] / n_opt, "critic/vf_clip_frac": s["vf_clip_frac"] / tok,
                  "critic/grad_norm": s["critic_grad_norm"] / n_opt / w, "critic/lr": self.critic.lr()}
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
        if not self.evals:  # a resumed run already has its "before" evaluation (and its drafter)
            if self.drafting is not None:
                self.warm_start_drafter()
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
            if t.save_every and self.step % t.save_every == 0 and self.step != t.max_steps and not skipped:
                self.save()
        if bar is not None:
            bar.close()
        if self.drafting is not None and self.cfg.drafter.final_steps:
            self.final_drafter_stats = self.final_fit_drafter()
            if self.d.is_main:
                self.tracker.log(self.final_drafter_stats, self.step)
        self.evaluate(self.step)
        self.save()
        return self.finish(self.wall_prior + time.perf_counter() - start)

    def final_fit_drafter(self) -> dict:
        """After the last RL step (see ``DrafterPhase.finish``): with ``drafter.final_prompts``, the final policy rolls
        out that many training prompts (each rank its strided share, the ones after the warm start's; the RL prompt
        stream is not touched), ``rollout.n`` each at the RL cap, for the drafter's final fit."""
        c, r = self.cfg.drafter, self.cfg.rollout
        if not c.final_prompts:
            return self.drafting.finish(self.rollout)
        prompts = self._drafter_prompts(c.final_prompts, after=c.warmup_prompts)
        return self.drafting.finish(self.rollout, prompts, r.n, r.max_tokens, r.temperature, self._features_of,
                                    self.cfg.run.seed)

    def _drafter_prompts(self, count: int, after: int = 0) -> list:
        """``count`` training prompts for the drafter, outside the RL prompt stream: this rank's strided share of the
        training set, ``count // ranks`` of it (at least 1), starting after the first ``after`` (wrapping round)."""
        share = self.task.train[self.d.rank::self.d.world_size]
        skip = max(1, after // self.d.world_size) if after else 0
        rows = (share[skip:] + share[:skip])[: max(1, count // self.d.world_size)]
        return to_prompts(rows, self.tokenizer, self.cfg.data)

    def warm_start_drafter(self) -> None:
        """Before RL step 1: the drafter learns from base-model rollouts of a few training prompts (each rank its own
        strided share; they do not touch the RL prompt stream), capped at ``drafter.warmup_max_tokens`` (default: as
        the RL rollouts), ``rollout.n`` each but no more rows than the replay slot keeps."""
        c, r = self.cfg.drafter, self.cfg.rollout
        prompts = self._drafter_prompts(c.warmup_prompts)
        cap = c.warmup_max_tokens or r.max_tokens
        n = min(r.n, -(-c.max_rows_per_step // len(prompts)))  # the replay slot keeps max_rows_per_step rows anyway
        self.warmup_stats = self.drafting.warm_start(self.rollout, prompts, n, cap, r.temperature,
                                                     self._features_of, self.cfg.run.seed)
        if self.d.is_main:
            self.tracker.log(self.warmup_stats, 0)

    def _features_of(self, batch: RolloutBatch):
        """The trainer's forward over a rollout batch (for the drafter's warm start)."""
        from trainers.drafting import rollout_features

        return rollout_features(self.policy.module, batch, self.cfg.trainer.micro_batch_size, self.pad_id,
                                self.cfg.rollout.temperature)

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
            print(f"resumed from {ckpt} at step {self.step}")

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
            c, r = self.cfg.drafter, self.cfg.rollout
            summary["drafter"] = {"method": c.method, "version": self.drafting.drafter.version,
                                  "lossless": self.rollout.lossless, "sampling": self.rollout.spec_sampling,
                                  "mean_accept_len": self.rollout.spec_total().mean_accept_len,
                                  "train_accept_len": self._train_accept_len(),
                                  "speedup_by_batch": self.rollout.controller.speedups()} | self.warmup_stats \
                | self.final_drafter_stats
            # after the estimates are read: these calls would count in the engine's totals
            t0 = time.perf_counter()
            measured = measure_speedup(self.rollout, self.eval_prompts, c.report_batch_sizes, c.report_calls,
                                       r.max_tokens, r.temperature, self.cfg.run.seed)
            summary["drafter"] |= {"measured_speedup": measured, "measured_max_tokens": r.max_tokens,
                                   "measured_calls": c.report_calls, "measure_s": time.perf_counter() - t0}
        weights = dict(self.policy.iter_hf_weights())  # every rank takes part in the ZeRO-3 gathers
        if self.d.is_main:
            self.run.write_summary(summary)
            self.export(self.run.path / "export", weights)
            self.report()
            self.tracker.finish()
        distributed.barrier()
        return summary

    def _train_accept_len(self) -> float:
        """Mean acceptance length (bonus token counted) over the RL steps' rollouts only, from metrics.jsonl (a resumed
        run's earlier steps included); the engine-wide ``mean_accept_len`` also pools the warm start, the
        evaluations (longer cap) and the final fit's rollouts."""
        rows = [m for m in self.run.read_jsonl("metrics.jsonl") if m["step"] <= self.step and "spec/drafts" in m]
        return SpecStats(drafts=sum(m["spec/drafts"] for m in rows),
                         accepted_tokens=sum(m["spec/accepted_tokens"] for m in rows)).mean_accept_len

    def report(self) -> None:
        """The before/after Pareto plot (run folder and W&B) and the model card of ``export/``."""
        from trainers.export import write_card
        from trainers.plots import eval_points, pareto_plot

        plot = pareto_plot(eval_points(self.evals), self.run.path / "pareto.png",
                           title=f"{self.run.path.name}: held-out accuracy vs tokens")
        self.tracker.log_image("eval/pareto", str(plot), self.step)
        write_card(self.run.path / "export", self.run.path)

    def export(self, out: Path, weights: dict[str, torch.Tensor]) -> None:
        """HF-format policy (LoRA merged) + tokenizer, from the full HF-named weights."""
        from trainers.weights import hf_root

        hf_root(self.policy.module).save_pretrained(out, state_dict=weights, safe_serialization=True)
        self.tokenizer.save_pretrained(out)
        if self.drafting is not None:
            self.drafting.drafter.export(out / "drafter")  # beside the model, in the layout vLLM loads


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
    from tqdm.auto import tqdm

    return tqdm(total=cfg.trainer.max_steps, initial=initial, desc="rl", unit="step", dynamic_ncols=True)


def _update_bar(bar, m: dict) -> None:
    if bar is None:
        return
    bar.set_postfix(acc=f"{m['acc/mean']:.2f}", len=f"{m['len/mean']:.0f}", reward=f"{m['reward/mean']:.2f}",
                    s=f"{m['time/step_s']:.1f}")
    bar.update(1)
