"""The policy's DeepSpeed engine: the only module that imports DeepSpeed.

Gradients of one optimizer step are accumulated over micro-batches with ``scale_wrt_gas=False``: the caller's
loss is already each micro-batch's exact share of the global aggregate (see :mod:`trainers.aggregation`), and
DeepSpeed averages gradients over data-parallel ranks, so each rank's loss is multiplied by the world size.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from trainers.config import Config

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def ds_config(cfg: Config, world_size: int, grad_accum: int) -> dict:
    """The DeepSpeed JSON config for this run, derived from the typed tree (never written by hand)."""
    out = {
        "train_micro_batch_size_per_gpu": cfg.trainer.micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": cfg.trainer.micro_batch_size * grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.model.dtype == "bfloat16":
        out["bf16"] = {"enabled": True}
    elif cfg.model.dtype == "float16":
        out["fp16"] = {"enabled": True}
    return out


class PolicyEngine:
    """Wraps ``deepspeed.initialize`` around an HF causal LM and a torch AdamW."""

    def __init__(self, model: torch.nn.Module, cfg: Config, world_size: int, grad_accum: int) -> None:
        import deepspeed  # heavy import kept at the edge

        o = cfg.optim
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, o.warmup_steps)))
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=ds_config(cfg, world_size, grad_accum))
        self.world_size = world_size
        self.zero_stage = cfg.deepspeed.zero_stage
        self._boundary_norm: float | None = None  # stage 0: DeepSpeed clips but does not keep the norm

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> None:
        if self.zero_stage == 0 and self.engine.is_gradient_accumulation_boundary():
            # gradients are already all-reduced here (every rank holds the averaged full gradient)
            grads = [p.grad.detach().float().norm() for p in self.module.parameters() if p.grad is not None]
            self._boundary_norm = float(torch.stack(grads).norm()) if grads else 0.0
        self.engine.step()

    def grad_norm(self) -> float:
        """Global gradient 2-norm of the last optimizer step, before clipping."""
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = self._boundary_norm
        if norm is None:
            raise RuntimeError("no optimizer step has been taken yet: the gradient norm is undefined")
        return float(norm)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @contextlib.contextmanager
    def full_params(self) -> Iterator[None]:
        """Materialise full parameters on every rank (ZeRO-3 gathers; other stages already hold them)."""
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                yield
        else:
            yield

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        """Full HF-named tensors for the rollout engine (``state_dict`` so tied weights are included)."""
        with self.full_params():
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def save(self, folder: str, client_state: dict) -> None:
        self.engine.save_checkpoint(folder, tag="deepspeed", client_state=client_state)

    def load(self, folder: str) -> dict:
        _, client_state = self.engine.load_checkpoint(folder, tag="deepspeed")
        return client_state or {}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]
