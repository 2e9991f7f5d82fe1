"""The policy's weights under their HF checkpoint names, one module at a time: what the rollout engine and the
export receive.

A *unit* is a module whose parameters travel together: a leaf module with its own parameters, or a whole LoRA layer
(base weight + adapters), which leaves as one merged tensor ``W + (alpha / r) B A`` computed on the fly — the
trainer's own copy is never merged, so its weights and optimizer state stay exactly as they were. Units are what
ZeRO-3 gathers (see :meth:`trainers.backend.engine.TrainEngine.iter_hf_weights`): a bucket of units at a time, never the
whole model.

Names are the plain HF model's (``model.layers.0.self_attn.q_proj.weight``): peft's ``base_model.model.`` prefix
and ``.base_layer`` infix are removed. Tied weights appear under every name that holds them (``lm_head.weight`` and
``model.embed_tokens.weight``), as in ``state_dict()``; vLLM needs both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Unit:
    name: str  # HF module path, e.g. "model.layers.0.self_attn.q_proj" ("" for the root)
    module: torch.nn.Module
    lora: bool  # a peft LoRA layer: one merged weight (+ the base bias) instead of its parameters

    def params(self) -> list[torch.nn.Parameter]:
        return list(self.module.parameters(recurse=self.lora))

    def nbytes(self) -> int:
        """Full (gathered) size: ZeRO-3 keeps the true shape in ``ds_shape`` and an empty local tensor."""
        return sum(int(getattr(p, "ds_numel", p.numel())) * p.element_size() for p in self.params())


def hf_root(module: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside a peft wrapper (or the module itself)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


def _is_lora_layer(module: torch.nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")


def sync_units(module: torch.nn.Module) -> list[Unit]:
    """Units of ``module`` (a HF model or a peft model around one) in ``named_modules`` order."""
    units, inside_lora = [], None
    for name, mod in hf_root(module).named_modules():
        if inside_lora is not None and name.startswith(inside_lora):
            continue
        if _is_lora_layer(mod):
            units.append(Unit(name, mod, lora=True))
            inside_lora = name + "."
        elif next(mod.parameters(recurse=False), None) is not None:
            units.append(Unit(name, mod, lora=False))
    return units


def unit_tensors(unit: Unit) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) of a unit whose parameters are materialised (gathered under ZeRO-3). Detached
    copies: the caller may keep them after the gather is released."""
    prefix = f"{unit.name}." if unit.name else ""
    if unit.lora:
        base = unit.module.base_layer
        merged = base.weight.detach().clone()
        for adapter in unit.module.active_adapters:
            if adapter in unit.module.lora_A:
                merged += unit.module.get_delta_weight(adapter).to(merged.dtype)
        yield f"{prefix}weight", merged
        if getattr(base, "bias", None) is not None:
            yield f"{prefix}bias", base.bias.detach().clone()
        return
    for pname, p in unit.module.named_parameters(recurse=False):
        yield f"{prefix}{pname}", p.detach().clone()


def buckets(units: list[Unit], bucket_bytes: int) -> Iterator[list[Unit]]:
    """Consecutive units grouped so each group's full size stays under ``bucket_bytes`` (a bigger unit goes alone)."""
    group, size = [], 0
    for u in units:
        n = u.nbytes()
        if group and size + n > bucket_bytes:
            yield group
            group, size = [], 0
        group.append(u)
        size += n
    if group:
        yield group
