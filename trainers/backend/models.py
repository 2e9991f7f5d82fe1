"""The networks the trainer owns besides the rollout engine: the policy (optionally with LoRA adapters through
``peft``), the PPO critic (a value head on a transformer backbone) and the frozen KL reference.

All take a HF model folder; none imports DeepSpeed (the engines wrap them in :mod:`trainers.backend.engine`).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from trainers.config import Config, LoraConfig


def load_policy(path: str, cfg: Config) -> torch.nn.Module:
    """HF causal LM from ``path`` in the trainer dtype; with ``model.lora.rank > 0`` a peft LoRA model whose base
    weights are frozen."""
    from transformers import AutoModelForCausalLM

    from trainers.backend.engine import torch_dtype

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(cfg.model.dtype))
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.model.lora.rank > 0:
        model = with_lora(model, cfg.model.lora)
    return model


def with_lora(model: torch.nn.Module, lora: LoraConfig) -> torch.nn.Module:
    """``peft.get_peft_model`` with the configured rank, alpha, dropout and target modules; fails naming the
    targets when none of them exists in the model."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if len(missing) == len(lora.target_modules):
        raise ValueError(f"model.lora.target_modules={lora.target_modules} match no module of the model "
                         f"(its linear layers: {sorted(n for n in names if n.endswith('proj'))})")
    peft_cfg = PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=[t for t in lora.target_modules if t in names], task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer backbone (hidden states, no LM head) of a HF causal LM, through a peft wrapper if any."""
    from trainers.backend.weights import hf_root

    return hf_root(model).get_decoder()


def lm_head(model: torch.nn.Module) -> torch.nn.Module:
    from trainers.backend.weights import hf_root

    return hf_root(model).get_output_embeddings()


class ValueModel(torch.nn.Module):
    """``V(s_t) = w . h_t + b``: a scalar head on a transformer backbone's final hidden state. The head starts at
    zero, so the first values are 0 and the backbone is not disturbed before the head has learned a scale."""

    def __init__(self, backbone: torch.nn.Module, hidden_size: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask [B,L] -> values [B,L] (float32)."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(h).squeeze(-1).float()


def load_critic(policy_path: str, cfg: Config) -> ValueModel:
    """The critic: ``critic.model="policy"`` copies the policy's backbone from its folder; otherwise a folder of
    its own (a smaller model may serve as the critic: it sees the same token ids, so it must share the tokenizer)."""
    from transformers import AutoConfig, AutoModel

    from trainers.backend.engine import torch_dtype

    path = policy_path if cfg.critic.model == "policy" else cfg.critic.model
    backbone = AutoModel.from_pretrained(path, dtype=torch_dtype(cfg.model.dtype))
    if cfg.model.gradient_checkpointing:
        backbone.gradient_checkpointing_enable()
    return ValueModel(backbone, AutoConfig.from_pretrained(path).hidden_size)


class Reference:
    """The frozen policy the KL term measures against: a separate model from ``model.ref_path`` (default: the
    initial policy), or — with LoRA and no explicit path — the policy itself with its adapters switched off,
    which costs no extra memory."""

    def __init__(self, policy_path: str, cfg: Config, device: torch.device, policy_module=None) -> None:
        self.shares_policy = cfg.model.lora.rank > 0 and not cfg.model.ref_path
        self.model = None
        if not self.shares_policy:
            from transformers import AutoModelForCausalLM

            from trainers.backend.engine import torch_dtype

            self.model = AutoModelForCausalLM.from_pretrained(cfg.model.ref_path or policy_path,
                                                              dtype=torch_dtype(cfg.model.dtype)).to(device)
            self.model.eval().requires_grad_(False)
        self.policy_module = policy_module

    @contextlib.contextmanager
    def module(self) -> Iterator[torch.nn.Module]:
        if self.model is not None:
            yield self.model
            return
        with self.policy_module.disable_adapter():
            yield self.policy_module
