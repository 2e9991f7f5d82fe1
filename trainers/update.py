"""Phases 4 and 6 of the RL step: the trainer's forward pass over the rollouts, then the policy (and critic) updates.

**Forward** (no grad, only what the configuration needs):
- ``old_logprobs``: the trainer's log-probs of the sampling policy; needed when the update is off-policy
  (several epochs or mini-batches), when the KL goes into the reward, or for sampler-mismatch correction. Otherwise
  the first update's own forward provides them (ratio 1 at the start of an on-policy update) and none is run here.
- ``ref_logprobs``: the frozen reference's, when ``algo.kl_coef > 0`` (skipped entirely at 0).
- ``values``: the critic's, for GAE.
- ``is_weights``: the sampler-mismatch importance weights ``pi_trainer / pi_vllm`` (truncated or masked).

**Update**, per mini-batch (one optimizer step) and micro-batch (one forward/backward):

    loss_t = w_t * PPO-clip(logp_t, old_t, A_t) + beta * KL(logp_t, ref_t)      (KL here unless it is in the reward)
    loss   = aggregate(loss, kept tokens, mode, global counts)

and, with a critic, the clipped value loss against the returns. The update knows no algorithm: advantages and
returns arrive finished.

**The drafter's features** (``want_features``): the hidden states of the first forward pass over every row with
the sampling policy's weights, as :class:`~drafters.types.DrafterBatch` rows on CPU, returned by the forward when it
runs a policy pass (``old_logprobs``), else by the update (its first epoch's first mini-batch, which is every row
when the update is on-policy). The drafter phase consumes them; no second forward pass, no callback.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from drafters.types import DrafterBatch
from trainers.backend import distributed
from trainers.algo.aggregation import GlobalCounts, aggregate, local_counts
from trainers.config import Config
from trainers.backend.logprobs import completion_logprobs, completion_values
from trainers.algo.losses import KL, LOSS, SAMPLER_CORRECTION, ISWeights, clipped_value_loss
from trainers.algo.types import LossInput
from trainers.metrics import Sums


@dataclass(frozen=True)
class Forward:
    old_logprobs: torch.Tensor | None  # [B,T] trainer log-probs of the sampled tokens before the update
    ref_logprobs: torch.Tensor | None  # [B,T] frozen reference log-probs
    values: torch.Tensor | None  # [B,T] critic values V_t at rollout time
    is_weights: ISWeights | None  # [B,T] sampler-mismatch weights and kept tokens
    features: list[DrafterBatch] | None = None  # the drafter's rows from the policy pass (on CPU), when it ran


@dataclass(frozen=True)
class UpdateOutput:
    sums: Sums  # this rank's metric sums of the step (trainers.metrics.SUM_KEYS)
    features: list[DrafterBatch] | None  # the drafter's rows from the first epoch, when the forward had none


@dataclass(frozen=True)
class Rows:
    """The update's view of a rollout batch (all tensors on CPU, row-aligned)."""

    prompt_ids: list[list[int]]  # [B] prompt tokens of each row
    completion_ids: torch.Tensor  # [B,T]
    mask: torch.Tensor  # [B,T] bool
    sampler_logprobs: torch.Tensor | None  # [B,T]

    def slice(self, sl: slice | torch.Tensor) -> "Rows":
        """Rows ``sl`` (a slice, or a LongTensor of row indices)."""
        lp = self.sampler_logprobs[sl] if self.sampler_logprobs is not None else None
        prompts = [self.prompt_ids[i] for i in sl.tolist()] if isinstance(sl, torch.Tensor) else self.prompt_ids[sl]
        return Rows(prompts, self.completion_ids[sl], self.mask[sl], lp)

    def by_length(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Indices of rows ``start:stop`` from shortest to longest sequence (prompt + completion; stable, so ties
        keep their order). Micro-batches cut from this order are padded to similar lengths: with long-tailed
        completions a random micro-batch is padded to its one long row, a sorted one mostly is not."""
        stop = len(self.prompt_ids) if stop is None else stop
        lens = torch.tensor([len(p) for p in self.prompt_ids[start:stop]]) + self.mask[start:stop].sum(-1)
        return start + torch.sort(lens, stable=True).indices


class Updater:
    """``want_features``: return the drafter's rows of the step (module docstring), with the residual stream after
    each of ``feature_layers`` layers when the drafter reads them (EAGLE-3)."""

    def __init__(self, cfg: Config, policy, pad_id: int, critic=None, reference=None,
                 want_features: bool = False, feature_layers: tuple[int, ...] = ()) -> None:
        self.cfg, self.policy, self.critic, self.reference, self.pad_id = cfg, policy, critic, reference, pad_id
        self.want_features, self.feature_layers = want_features, tuple(feature_layers)
        a, t = cfg.algo, cfg.trainer
        self.on_policy = t.epochs * t.mini_batches == 1
        self.needs_old = not self.on_policy or a.kl_in_reward or a.sampler_correction != "none"
        self._force_skip = False  # this step's rewards/advantages were non-finite: skip all its optimizer steps

    def _backward_step(self, engine, loss: torch.Tensor, output: torch.Tensor, key: str, sums: Sums) -> None:
        """Backward and micro-step of ``engine``. A non-finite loss on any rank (or a forced skip) backpropagates
        a zero through ``output`` instead (keeping every rank's collectives in step) and makes the optimizer step it
        belongs to a skipped one, counted in ``sums[key]`` at its boundary."""
        if self._force_skip or self._nonfinite(loss):
            engine.skip_pending = True
            loss = output.nan_to_num(0.0, 0.0, 0.0).sum() * 0.0
        engine.backward(loss)
        engine.step(skip=engine.skip_pending)
        if engine.at_boundary:
            sums.add(key, float(engine.skip_pending))
            engine.skip_pending = False

    @staticmethod
    def _nonfinite(loss: torch.Tensor) -> bool:
        """True on every rank when the loss is NaN/inf on any rank (so all ranks take the same branch)."""
        flag = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0])
        return bool(distributed.all_sum(flag)[0] > 0)

    # ------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, rows: Rows, timers) -> Forward:
        self.policy.module.eval()
        features = [] if self.want_features and self.needs_old else None
        old = self._map(rows, lambda r: self._policy_logprobs(r, features)) if self.needs_old else None
        ref = None
        if self.reference is not None:
            with timers("ref"), self.reference.module() as ref_model:
                ref = self._map(rows, lambda r: self._logprobs(ref_model, r)[0])
        values = None
        if self.critic is not None:
            values = self._map(rows, lambda r: completion_values(self.critic.module, r.prompt_ids, r.completion_ids,
                                                                 r.mask, self.pad_id))
        isw = None
        if self.cfg.algo.sampler_correction != "none" and rows.sampler_logprobs is not None:
            isw = SAMPLER_CORRECTION.get_or_raise(self.cfg.algo.sampler_correction, "algo.sampler_correction")(
                old, rows.sampler_logprobs, rows.mask, self.cfg.algo.sampler_is_cap)
        return Forward(old, ref, values, isw, features)

    def _policy_logprobs(self, r: Rows, features: list | None) -> torch.Tensor:
        lp, _, feats = self._logprobs(self.policy.module, r, features is not None)
        if features is not None:
            features.append(_drafter_rows(feats))
        return lp

    def _logprobs(self, model, r: Rows, for_drafter: bool = False):
        return completion_logprobs(model, r.prompt_ids, r.completion_ids, r.mask, self.pad_id,
                                   self.cfg.rollout.temperature, self.cfg.trainer.logprob_chunk,
                                   self.policy.zero_stage == 3, self.cfg.trainer.logprob_backend,
                                   self.feature_layers if for_drafter else ())

    def _map(self, rows: Rows, fn) -> torch.Tensor:
        """fn over micro-batches of rows of similar length, as [B,T] on CPU in the rows' order."""
        mb, width = self.cfg.trainer.micro_batch_size, rows.completion_ids.shape[1]
        order = rows.by_length()
        parts = [fn(rows.slice(order[s:s + mb])).float().cpu() for s in range(0, len(order), mb)]
        out = torch.empty((len(order), width), dtype=torch.float32)
        out[order] = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts], 0)
        return out

    # ------------------------------------------------------------------ update
    def update(self, rows: Rows, adv: torch.Tensor, returns: torch.Tensor | None, fwd: Forward,
               skip: bool = False) -> UpdateOutput:
        """All epochs and mini-batches -> this rank's metric sums (and the drafter's rows when the forward had none).
        ``skip`` (non-finite rewards or advantages on some rank) runs every optimizer step at learning rate 0, as a
        non-finite loss does."""
        self._force_skip = skip
        t, a = self.cfg.trainer, self.cfg.algo
        self.policy.module.train()
        n = len(rows.prompt_ids)
        mb_size = n // t.mini_batches
        keep = fwd.is_weights.keep if fwd.is_weights is not None else rows.mask
        sums = Sums()
        features = [] if self.want_features and fwd.features is None else None
        for epoch in range(t.epochs):
            for m0 in range(0, n, mb_size):
                counts = distributed.all_sum(local_counts(keep[m0:m0 + mb_size]))
                g = GlobalCounts(float(counts[0]), float(counts[1]), float(a.norm_length or self.cfg.rollout.max_tokens))
                order = rows.by_length(m0, m0 + mb_size)  # same mini-batch, micro-batches of similar length
                for s in range(0, mb_size, t.micro_batch_size):
                    sl = order[s:s + t.micro_batch_size]
                    self._policy_micro(rows.slice(sl), adv[sl], fwd, sl, g, sums,
                                       features if epoch == 0 and m0 == 0 else None)
                    if self.critic is not None:
                        self._critic_micro(rows.slice(sl), returns[sl], fwd.values[sl], g, sums)
                sums.add("grad_norm", self.policy.grad_norm())
                if self.critic is not None:
                    sums.add("critic_grad_norm", self.critic.grad_norm())
        return UpdateOutput(sums, features)

    def _policy_micro(self, r: Rows, adv: torch.Tensor, fwd: Forward, sl: slice | torch.Tensor, g: GlobalCounts,
                      sums: Sums, features: list | None = None) -> None:
        a = self.cfg.algo
        self.policy.begin_micro()
        lp, ent, feats = self._logprobs(self.policy.module, r, features is not None)
        if features is not None:
            features.append(_drafter_rows(feats))
        dev = lp.device
        mask = r.mask.to(dev)
        old = fwd.old_logprobs[sl].to(dev) if fwd.old_logprobs is not None else lp.detach()
        isw = _slice_is(fwd.is_weights, sl, dev) if fwd.is_weights is not None else ISWeights(torch.ones_like(lp), mask)
        out = LOSS.get_or_raise(a.loss, "algo.loss")(LossInput(logprobs=lp, old_logprobs=old, advantages=adv.to(dev),
                                                               mask=mask), a)
        per_token = out.per_token * isw.weights
        ref_kl = None
        if fwd.ref_logprobs is not None:
            ref_kl = KL.get_or_raise(a.kl_estimator, "algo.kl_estimator")(lp, fwd.ref_logprobs[sl].to(dev)) * mask
            if not a.kl_in_reward:
                per_token = per_token + a.kl_coef * ref_kl
        loss = aggregate(per_token, isw.keep, a.aggregation, g)
        self._backward_step(self.policy, loss, lp, "nonfinite", sums)
        mf = mask.to(torch.float32)
        sums.add("loss", float(loss.detach()))
        sums.add("entropy", float((ent.detach() * mf).sum()))
        sums.add("clip_frac", float(out.metrics["clip_frac"].sum()))
        sums.add("tokens", float(mf.sum()))
        sums.add("kept_tokens", float(isw.keep.sum()))
        if ref_kl is not None:
            sums.add("ref_kl", float(ref_kl.detach().sum()))
        if r.sampler_logprobs is not None:
            sampler = r.sampler_logprobs.to(dev)
            sums.add("sampler_kl", float((KL["k3"](sampler, old) * mf).sum()))  # KL(vLLM || trainer), k3 estimate
            sums.add("mismatch_ratio", float((torch.exp((old - sampler).clamp(-20, 20)) * mf).sum()))

    def _critic_micro(self, r: Rows, returns: torch.Tensor, old_values: torch.Tensor, g: GlobalCounts,
                      sums: Sums) -> None:
        self.critic.module.train()
        self.critic.begin_micro()
        v = completion_values(self.critic.module, r.prompt_ids, r.completion_ids, r.mask, self.pad_id)
        dev = v.device
        out = clipped_value_loss(v, old_values.to(dev), returns.to(dev), r.mask.to(dev), self.cfg.critic.value_clip)
        loss = aggregate(out.per_token, r.mask.to(dev), self.cfg.algo.aggregation, g)
        self._backward_step(self.critic, loss, v, "critic_nonfinite", sums)
        sums.add("vf_loss", float(loss.detach()))
        sums.add("vf_clip_frac", float(out.metrics["vf_clip_frac"].sum()))


def _drafter_rows(feats) -> DrafterBatch:
    """The drafter's view of one micro-batch's features, moved to CPU (GPU memory is not held through the update)."""
    b = feats.to_drafter_batch()
    return DrafterBatch(b.token_ids.cpu(), b.hidden_states.detach().cpu(), b.valid.cpu(), b.target.cpu(),
                        None if b.aux_hidden is None else b.aux_hidden.detach().cpu())


def _slice_is(w: ISWeights, sl: slice | torch.Tensor, device) -> ISWeights:
    return ISWeights(w.weights[sl].to(device), w.keep[sl].to(device))
