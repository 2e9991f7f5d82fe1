"""A small standalone draft language model (vLLM ``method: draft_model``): a Llama with the policy's tokenizer and
vocabulary, ``draft_layers`` decoder layers and its own embedding and LM head, distilled from the policy:

    loss = KL(softmax(W h_q / T) || softmax(draft_logits_q / T))   at every target position q

It needs no policy hidden state at decode time (so it also drafts for a policy it was not trained beside) but
costs a full small forward per proposed token; the EAGLE head is the default.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from drafters.eagle import DecoderLayer, RMSNorm, llama_sizes
from drafters.types import DrafterBatch


class DraftLM(torch.nn.Module):
    method = "draft_model"

    def __init__(self, sizes: dict, layers: int) -> None:
        super().__init__()
        self.sizes, self.num_layers = dict(sizes), layers
        self.embed_tokens = torch.nn.Embedding(sizes["vocab_size"], sizes["hidden_size"])
        self.layers = torch.nn.ModuleList([DecoderLayer(sizes, input_norm=True) for _ in range(layers)])
        self.norm = RMSNorm(sizes["hidden_size"], sizes["rms_norm_eps"])
        self.lm_head = torch.nn.Linear(sizes["hidden_size"], sizes["vocab_size"], bias=False)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """ids, valid [B,L] -> final hidden [B,L,H]."""
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, positions, valid)
        return self.norm(x)

    def loss(self, batch: DrafterBatch, embed: torch.Tensor, lm_head: torch.Tensor, temperature: float,
             cls_weight: float, reg_weight: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Distillation at every target position q (no hidden-state regression: the sizes may differ)."""
        f = self.forward(batch.token_ids, batch.valid)
        sel = batch.target & batch.valid
        h_q = batch.hidden_states[sel].to(f.dtype)
        n = int(sel.sum())
        if n == 0:
            return f.sum() * 0.0, torch.zeros((), dtype=torch.long), 0
        target_logp = F.log_softmax((h_q @ lm_head.t()).float() / temperature, -1)
        draft_logp = F.log_softmax(self.lm_head(f[sel]).float() / temperature, -1)
        cls = F.kl_div(draft_logp, target_logp, log_target=True, reduction="sum") / n
        return cls_weight * cls, (draft_logp.argmax(-1) == target_logp.argmax(-1)).sum(), n

    @classmethod
    def from_policy(cls, policy_config: dict, layers: int, hidden: int, embed: torch.Tensor,
                    lm_head: torch.Tensor) -> "DraftLM":
        """Policy-shaped (heads scaled to ``hidden``), embedding and LM head initialised from the policy's."""
        s = llama_sizes(policy_config)
        if hidden and hidden != s["hidden_size"]:
            s = s | {"hidden_size": hidden, "intermediate_size": 4 * hidden,
                     "num_attention_heads": max(1, hidden // s["head_dim"]),
                     "num_key_value_heads": max(1, hidden // s["head_dim"])}
        model = cls(s, layers)
        if s["hidden_size"] == embed.shape[1]:
            with torch.no_grad():
                model.embed_tokens.weight.copy_(embed)
                model.lm_head.weight.copy_(lm_head)
        return model

    def save(self, folder: str | Path, policy_config: dict) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        s = self.sizes
        cfg = {k: v for k, v in policy_config.items() if k not in ("auto_map", "quantization_config")}
        cfg |= {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": self.num_layers,
                "hidden_size": s["hidden_size"], "intermediate_size": s["intermediate_size"],
                "num_attention_heads": s["num_attention_heads"], "num_key_value_heads": s["num_key_value_heads"],
                "head_dim": s["head_dim"], "tie_word_embeddings": False, "attention_bias": s["attention_bias"],
                "laconic_drafter": "draft_model"}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        state = {("model." + k if not k.startswith("lm_head") else k): v.detach().contiguous().clone()
                 for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        return folder
