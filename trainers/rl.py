"""The RL loop: group-sampled policy optimisation (GRPO family) with a colocated vLLM engine on DeepSpeed.

One step, read top to bottom in :meth:`Trainer.train_step`:

1. rollout   each rank samples ``rollout.n`` completions for its share of ``trainer.prompts_per_step`` prompts
2. reward    ``rewards.compute`` verifies once and sums the configured terms -> r [B]
3. advantage ``ADVANTAGE[algo.advantage]`` (group-normalised for GRPO) -> A [B,T]
4. update    for each epoch and mini-batch: policy log-probs from hidden states (chunked kernel),
             ``LOSS[algo.loss]`` per token, ``aggregate`` with global counts, DeepSpeed backward/step
5. sync      full weights -> ``VLLMEngine.load_policy`` (no restart)
6. log       one reduction per step -> metrics.jsonl, W&B, progress bar

Simplifications: the sampler is trusted as the behaviour policy when one update is made per step (ratio 1 at the
start of the update); with several epochs or mini-batches the behaviour log-probs are recomputed by the trainer
before the first update. No reference model (KL) yet.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import rewards
from rewards import RewardInput, RewardOutput
from rewards.types import concat_outputs, select_output
from rollout.types import RolloutBatch, SamplingSpec, concat_batches, select_rows
from trainers import checkpoint, distributed
from trainers.advantages import ADVANTAGE
from trainers.aggregation import GlobalCounts, aggregate, local_counts
from trainers.config import Config
from trainers.data import PromptStream, to_prompts
from trainers.evaluation import evaluate
from trainers.logprobs import completion_logprobs
from trainers.losses import LOSS
from trainers.metrics import Timers, length_stats
from trainers.types import AdvantageInput, LossInput


@dataclass(frozen=True)
class TaskData:
    train: list[dict]  # rows with prompt, answer, uid
    eval: list[dict]  # held-out rows
    name: str = "task"  # data set name for eval records


class Trainer:
    def __init__(self, cfg: Config, model_path: str, task: TaskData, config_yaml: str,
                 local_rank: int | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rollout.vllm_engine import VLLMEngine
        from trainers.engine import PolicyEngine, torch_dtype
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
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype(cfg.model.dtype))
        if cfg.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        t = cfg.trainer
        self.rows_per_rank = t.prompts_per_step // self.d.world_size * cfg.rollout.n
        grad_accum = self.rows_per_rank // t.mini_batches // t.micro_batch_size
        self.policy = PolicyEngine(model.to(self.d.device), cfg, self.d.world_size, grad_accum)
        self.rollout = VLLMEngine(model_path, cfg.rollout, seed=cfg.run.seed)
        self.prompts_per_rank = t.prompts_per_step // self.d.world_size
        self.stream = PromptStream(to_prompts(task.train, self.tokenizer), cfg.run.seed, self.d.rank, self.d.world_size)
        self.eval_prompts = to_prompts(task.eval, self.tokenizer)
        self.tracker = Tracker(cfg.logging, str(self.run.path), self.run.path.name, json.loads(json.dumps(
            _as_dict(cfg), default=str)), enabled=self.d.is_main)
        self.reward_states = rewards.make_states(cfg.reward)
        self.reward_cfg = _with_defaults(cfg)
        self.needs_offsets = any(t in rewards.TOKEN_LEVEL for t in cfg.reward.terms)
        self.step, self.tokens_total, self.version, self.wall_prior = 0, 0, 0, 0.0
        self.evals: list[dict] = []
        self.maybe_resume()

    # ------------------------------------------------------------------ the step
    def train_step(self, step: int) -> dict:
        timers = Timers()
        self._generated_tokens = 0
        with timers("step"):
            batch, rewards, sample_stats = self.sample_phase(step, timers)
            with timers("advantage"):
                adv = self.advantage_phase(batch, rewards)
            with timers("update"):
                train_stats = self.update_phase(batch, adv)
            with timers("sync"):
                self.sync_phase()
        return self.log_phase(step, batch, rewards, train_stats, timers) | sample_stats

    def sample_phase(self, step: int, timers: Timers) -> tuple[RolloutBatch, RewardOutput, dict]:
        """Rollout + reward. With dynamic sampling (DAPO), groups whose rewards have zero spread (no learning
        signal) are dropped and more prompts sampled, up to ``max_sample_rounds``; the kept groups are cut to this
        rank's quota, and a shortfall after the last round is filled with dropped groups (they get A = 0)."""
        t = self.cfg.trainer
        rounds, kept, dropped = 0, [], []
        while True:
            with timers("rollout"):
                batch = self.rollout_phase(step, rounds)
            with timers("reward"):
                out = self.reward_phase(batch)
            rounds += 1
            if not t.dynamic_sampling:
                return batch, out, {}
            for g in range(len(batch.prompts)):
                rows = (batch.prompt_index == g).nonzero().flatten()
                (kept if out.total[rows].std() > 0 else dropped).append((batch, out, rows))
            if len(kept) >= self.prompts_per_rank or rounds >= t.max_sample_rounds:
                break
        chosen = (kept + dropped)[:self.prompts_per_rank]
        stats = {"rollout/sample_rounds": rounds, "rollout/kept_group_frac": len(kept) / (len(kept) + len(dropped)),
                 "rollout/filled_groups": max(0, self.prompts_per_rank - len(kept))}
        return (concat_batches([select_rows(b, rows) for b, _, rows in chosen]),
                concat_outputs([select_output(o, rows) for _, o, rows in chosen]), stats)

    def rollout_phase(self, step: int, round_: int = 0) -> RolloutBatch:
        r = self.cfg.rollout
        prompts = self.stream.take(self.prompts_per_rank)
        spec = SamplingSpec(n=r.n, max_tokens=r.max_tokens, temperature=r.temperature, top_p=r.top_p,
                            seed=(self.cfg.run.seed * 7_919 + step + 1) * 31 + round_)
        batch = self.rollout.generate(prompts, spec)
        self._generated_tokens += int(batch.num_tokens.sum())
        return batch

    def reward_phase(self, batch: RolloutBatch) -> RewardOutput:
        """Rewards from the state before this batch; then every rank's state update is applied on every rank."""
        offsets = self._token_offsets(batch) if self.needs_offsets else None
        inp = RewardInput(completions=batch.texts, num_tokens=batch.num_tokens, truncated=batch.truncated,
                          group_ids=batch.group_ids, meta=batch.meta, token_offsets=offsets)
        out = rewards.compute(inp, self.reward_cfg, self.reward_states)
        if self.reward_states:
            local = rewards.observe(out.input, self.reward_states)
            rewards.apply(self.reward_states, distributed.gather_objects(local))
        return out

    def _token_offsets(self, batch: RolloutBatch) -> list[list[int]]:
        """Character offset where each completion token starts in its decoded text (special tokens are empty)."""
        out = []
        for ids, n in zip(batch.completion_ids.tolist(), batch.num_tokens.tolist()):
            pieces = self.tokenizer.batch_decode([[t] for t in ids[:n]], skip_special_tokens=True)
            starts, pos = [], 0
            for p in pieces:
                starts.append(pos)
                pos += len(p)
            out.append(starts)
        return out

    def advantage_phase(self, batch: RolloutBatch, rewards: RewardOutput) -> torch.Tensor:
        fn = ADVANTAGE.get_or_raise(self.cfg.algo.advantage, "algo.advantage")
        return fn(AdvantageInput(rewards=rewards.total, group_ids=batch.group_ids, mask=batch.completion_mask,
                                 token_rewards=rewards.token_rewards, all_sum=distributed.all_sum), self.cfg.algo)

    def update_phase(self, batch: RolloutBatch, adv: torch.Tensor) -> dict[str, torch.Tensor]:
        t, a = self.cfg.trainer, self.cfg.algo
        self.policy.module.train()
        prompt_ids = [batch.prompts[int(i)].token_ids for i in batch.prompt_index]
        on_policy = t.epochs * t.mini_batches == 1
        old = None if on_policy else self._behaviour_logprobs(batch, prompt_ids)
        mb_size = self.rows_per_rank // t.mini_batches
        sums = torch.zeros(5, dtype=torch.float64)  # loss, entropy*tok, clip*tok, tokens, grad_norm
        for _ in range(t.epochs):
            for m0 in range(0, self.rows_per_rank, mb_size):
                counts = distributed.all_sum(local_counts(batch.completion_mask[m0:m0 + mb_size]))
                g = GlobalCounts(float(counts[0]), float(counts[1]), float(a.norm_length or self.cfg.rollout.max_tokens))
                for s in range(m0, m0 + mb_size, t.micro_batch_size):
                    sl = slice(s, s + t.micro_batch_size)
                    sums[:4] += self._micro_step(batch, prompt_ids, adv, old, sl, g)
                sums[4] += self.policy.grad_norm()
        return {"sums": sums, "optimizer_steps": torch.tensor(float(t.epochs * t.mini_batches))}

    def _micro_step(self, batch, prompt_ids, adv, old, sl: slice, g: GlobalCounts) -> torch.Tensor:
        mask = batch.completion_mask[sl].to(self.d.device)
        lp, ent, _ = completion_logprobs(self.policy.module, prompt_ids[sl], batch.completion_ids[sl],
                                         batch.completion_mask[sl], self.pad_id, self.cfg.rollout.temperature,
                                         self.cfg.trainer.logprob_chunk, self.policy.zero_stage == 3)
        old_lp = lp.detach() if old is None else old[sl].to(lp.device)
        out = LOSS.get_or_raise(self.cfg.algo.loss, "algo.loss")(
            LossInput(logprobs=lp, old_logprobs=old_lp, advantages=adv[sl].to(lp.device), mask=mask), self.cfg.algo)
        loss = aggregate(out.per_token, mask, self.cfg.algo.aggregation, g)
        self.policy.backward(loss)
        self.policy.step()
        mf = mask.to(torch.float32)
        return torch.tensor([float(loss.detach()), float((ent.detach() * mf).sum()),
                             float(out.metrics["clip_frac"].sum()), float(mf.sum())], dtype=torch.float64)

    @torch.no_grad()
    def _behaviour_logprobs(self, batch: RolloutBatch, prompt_ids: list[list[int]]) -> torch.Tensor:
        parts = []
        for s in range(0, self.rows_per_rank, self.cfg.trainer.micro_batch_size):
            sl = slice(s, s + self.cfg.trainer.micro_batch_size)
            lp, _, _ = completion_logprobs(self.policy.module, prompt_ids[sl], batch.completion_ids[sl],
                                           batch.completion_mask[sl], self.pad_id, self.cfg.rollout.temperature,
                                           self.cfg.trainer.logprob_chunk, self.policy.zero_stage == 3)
            parts.append(lp.cpu())
        width = batch.completion_ids.shape[1]
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts], 0)

    def sync_phase(self) -> None:
        self.version += 1
        self.rollout.load_policy(self.policy.state_dict_for_sync().items(), self.version)

    def log_phase(self, step: int, batch: RolloutBatch, rewards: RewardOutput, train: dict, timers: Timers) -> dict:
        rows = torch.stack([batch.num_tokens.to(torch.float64), rewards.total.to(torch.float64),
                            rewards.correct.to(torch.float64), batch.truncated.to(torch.float64)], -1)
        rows = distributed.all_gather_rows(rows)  # [B_global, 4]
        sums = distributed.all_sum(train["sums"])
        n_opt = float(train["optimizer_steps"])
        tokens = float(rows[:, 0].sum())
        gen, rollout_s = distributed.all_sum(torch.tensor([float(self._generated_tokens), timers.seconds["rollout"]],
                                                          dtype=torch.float64)).tolist()
        rollout_s /= self.d.world_size  # mean wall time of a rank's rollout
        self.tokens_total += int(gen)
        m = {"step": step + 1, "epoch": self.stream.epoch} | timers.as_metrics()
        m |= {"reward/mean": float(rows[:, 1].mean()), "reward/std": float(rows[:, 1].std()),
              "acc/mean": float(rows[:, 2].mean())}
        m |= {f"reward/{k}": float(distributed.all_sum(v.to(torch.float64).sum().reshape(1))[0]) / rows.shape[0]
              for k, v in rewards.terms.items()}
        m |= length_stats(rows[:, 0], "len/")
        m |= {"len/truncated_frac": float(rows[:, 3].mean()), "rollout/tokens_per_s": gen / max(rollout_s, 1e-9),
              "rollout/sequences": rows.shape[0], "rollout/tokens": tokens, "rollout/generated_tokens": gen,
              "train/loss": float(sums[0]) / n_opt, "train/entropy": float(sums[1] / sums[3].clamp(min=1)),
              "train/clip_frac": float(sums[2] / sums[3].clamp(min=1)),
              "train/grad_norm": float(sums[4]) / n_opt / self.d.world_size, "train/lr": self.policy.lr(),
              "policy_version": self.version}
        return m

    # ------------------------------------------------------------------ the run
    def evaluate(self, step: int) -> dict:
        m = evaluate(self.rollout, self.eval_prompts, self.cfg, self.d.rank, self.d.world_size)
        rec = {"step": step, "dataset": self.task.name} | m
        if self.d.is_main:
            self.run.log_eval(rec)
            self.tracker.log(m, step)
        self.evals.append(rec)
        return rec

    def fit(self) -> dict:
        t, start = self.cfg.trainer, time.perf_counter()
        self._fit_start = start
        if not self.evals:  # a resumed run already has its "before" evaluation
            self.evaluate(self.step)
        bar = _progress(self.cfg, self.d.is_main, self.step)
        for step in range(self.step, t.max_steps):
            m = self.train_step(step)
            self.step = step + 1
            if self.d.is_main:
                self.run.log_metrics(m)
                self.tracker.log(m, self.step)
                _update_bar(bar, m)
            if t.eval_every and self.step % t.eval_every == 0 and self.step != t.max_steps:
                self.evaluate(self.step)
            if t.save_every and self.step % t.save_every == 0 and self.step != t.max_steps:
                self.save()
        if bar is not None:
            bar.close()
        self.evaluate(self.step)
        self.save()
        summary = self.finish(self.wall_prior + time.perf_counter() - start)
        return summary

    def maybe_resume(self) -> None:
        """``run.resume``: "auto" = newest complete checkpoint in the run folder (none: start fresh), or a path.
        Restores weights, optimizer, data cursors and reward states, drops metrics logged after the checkpoint,
        and pushes the restored weights into the engine."""
        ckpt = checkpoint.resolve(self.cfg.run.resume, self.run.checkpoints)
        if ckpt is None:
            return
        self.policy.load(str(ckpt))
        state = json.loads((ckpt / "trainer_state.json").read_text())
        self.step, self.tokens_total, self.wall_prior = state["step"], state["tokens_total"], state["wall_s"]
        self.stream.load_state_dict(state["streams"][self.d.rank])
        for name, st in self.reward_states.items():
            st.load_state_dict(state["reward_states"][name])
        if self.d.is_main:
            self.run.truncate_after(self.step)
        distributed.barrier()
        self.evals = [e for e in self.run.read_jsonl("eval.jsonl") if e["step"] <= self.step]
        self.version = state["version"] - 1
        self.sync_phase()
        if self.d.is_main:
            print(f"resumed from {ckpt} at step {self.step}")

    def save(self) -> Path:
        state = {"step": self.step, "version": self.version, "tokens_total": self.tokens_total,
                 "wall_s": self.wall_prior + (time.perf_counter() - self._fit_start if hasattr(self, "_fit_start") else 0.0),
                 "streams": distributed.gather_objects(self.stream.state_dict()),  # one per rank
                 "reward_states": {k: v.state_dict() for k, v in self.reward_states.items()}}
        return checkpoint.save(self.policy, self.run.checkpoints, self.step, state, self.cfg.trainer.keep_last,
                               self.d.is_main)

    def finish(self, wall_s: float) -> dict:
        keys = ("eval/acc", "eval/len_mean", "eval/len_median", "eval/len_p90", "eval/len_max",
                "eval/truncated_frac", "eval/tokens_per_correct")
        before, after = self.evals[0], self.evals[-1]
        summary = {"before": {"step": before["step"]} | {k: before[k] for k in keys},
                   "after": {"step": after["step"]} | {k: after[k] for k in keys},
                   "totals": {"steps": self.step, "wall_s": wall_s, "rollout_tokens": self.tokens_total,
                              "ranks": self.d.world_size, "engine_start_s": self.rollout.start_s}}
        if self.d.is_main:
            self.run.write_summary(summary)
            self.export(self.run.path / "export")
            self.tracker.finish()
        distributed.barrier()
        return summary

    def export(self, out: Path) -> None:
        """HF-format policy + tokenizer (rank 0; full parameters under ZeRO-3)."""
        with self.policy.full_params():
            self.policy.module.save_pretrained(out, safe_serialization=True)
        self.tokenizer.save_pretrained(out)


def _with_defaults(cfg: Config):
    """The reward config with run-dependent defaults filled (DECS's L_max = the completion cap)."""
    import dataclasses

    r = cfg.reward
    if r.decs.max_len <= 0:
        r = dataclasses.replace(r, decs=dataclasses.replace(r.decs, max_len=cfg.rollout.max_tokens))
    return r


def _run_dir(cfg: Config) -> Path:
    """``run.output_dir``, or ``runs/<recipe>-<timestamp>`` chosen by rank 0 and shared with every rank."""
    if cfg.run.output_dir:
        return Path(cfg.run.output_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(distributed.gather_objects(f"runs/{cfg.recipe}-{stamp}")[0])


def _as_dict(cfg: Config) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)


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
