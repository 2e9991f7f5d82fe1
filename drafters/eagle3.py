"""EAGLE-3 draft head (Li et al. 2025) in plain PyTorch, computing exactly what vLLM's ``Eagle3LlamaForCausalLM``
and SGLang's ``LlamaForCausalLMEagle3`` do:

    g_p   = fc([a_p ; b_p ; c_p])              at step 1: three of the policy's residual-stream states at p; fc [H,3H]
    y_p   = [RMSNorm_in(embed(token_{p+1})) ; RMSNorm_hidden(g_p)]                 (2H: what q/k/v read)
    r_p   = g_p + Attn(y_p)                    (RoPE at position p, causal over the head's own earlier positions)
    f_p   = r_p + MLP(RMSNorm_post(r_p))                                          (SwiGLU)
    draft = softmax(W_d RMSNorm(f_p) / T)      W_d: the head's own LM head over a draft vocabulary of V_d tokens

At steps 2.. ``g`` is the head's own previous ``f`` (no fc). ``a, b, c`` are the residual stream after layers
(2, L/2, L-3) of an L-layer policy: the default both engines capture when the checkpoint names no layers. The export
names none on purpose: vLLM reads ``eagle_aux_hidden_state_layer_ids`` as "after k layers", SGLang as "output of layer
k" (one layer later), so only the default means the same features in both; it needs three distinct layers (L >= 7).

The draft vocabulary (``drafter.train_vocab`` = V_d, 0 = the whole vocabulary) is the V_d tokens the rollouts use
most; the checkpoint's ``d2t`` maps draft id i to target id i + d2t[i] and ``t2d`` marks the target ids drafted.
Drafting over 2,048 tokens instead of a real model's 49,152 is what makes the head cheap beside the target. Tokens
outside it are never drafted; verification keeps decoding lossless.

The head starts as the policy's own early exit: fc passes the last captured state, the layer's output projections
are zero and ``norm``/``lm_head`` are the policy's final norm and LM-head rows, so its first drafts are the policy's
logit lens at layer L-3 (top-1 agreement far above a random head's), and training moves it from there.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from drafters.eagle import DecoderLayer, EagleHead, RMSNorm, _distill, llama_sizes
from drafters.types import DrafterBatch


def aux_layers(num_layers: int) -> tuple[int, int, int]:
    """The policy layers whose outputs feed the head: the engines' shared default for an L-layer model."""
    layers = (2, num_layers // 2, num_layers - 3)
    if num_layers < 7:
        raise ValueError(f"drafter.method=eagle3 reads the residual stream after layers {layers} (vLLM's and SGLang's "
                         f"default); a {num_layers}-layer policy has no three distinct ones: use drafter.method=eagle")
    return layers


class Eagle3Layer(DecoderLayer):
    """EAGLE-3's decoder layer: q/k/v read the normed embedding beside the normed hidden state (2H); the residual is
    the hidden state itself."""

    def __init__(self, s: dict) -> None:
        super().__init__(s, input_norm=False, in_dim=2 * s["hidden_size"])
        self.input_layernorm = RMSNorm(s["hidden_size"], s["rms_norm_eps"])
        self.hidden_norm = RMSNorm(s["hidden_size"], s["rms_norm_eps"])  # both applied in Eagle3Head.enter


class Eagle3Head(EagleHead):
    """The trainable head; ``embed`` is the policy's (frozen, not owned, not exported), ``lm_head`` its own."""

    method = "eagle3"

    def __init__(self, sizes: dict, num_layers: int, draft_ids: torch.Tensor | None = None) -> None:
        torch.nn.Module.__init__(self)
        self.sizes, self.num_layers = dict(sizes), num_layers
        self.aux_layers = aux_layers(num_layers)
        h, v = sizes["hidden_size"], sizes["vocab_size"]
        ids = torch.arange(v) if draft_ids is None else draft_ids.to(torch.long)
        self.full_vocab = draft_ids is None or len(ids) == v
        self.fc = torch.nn.Linear(len(self.aux_layers) * h, h, bias=False)
        self.midlayer = Eagle3Layer(sizes)
        self.norm = RMSNorm(h, sizes["rms_norm_eps"])
        self.lm_head = torch.nn.Linear(h, len(ids), bias=False)
        self.register_buffer("d2t", ids - torch.arange(len(ids)))
        self.register_buffer("t2d", torch.zeros(v, dtype=torch.bool).index_fill_(0, ids, True))

    @property
    def layers(self):  # the chains of EagleHead run its one layer
        return [self.midlayer]

    @property
    def draft_ids(self) -> torch.Tensor:
        """Target token id of each draft id, ascending [V_d]."""
        return self.d2t + torch.arange(len(self.d2t), device=self.d2t.device)

    @torch.no_grad()
    def start_from_policy(self, lm_head: torch.Tensor, final_norm: torch.Tensor | None) -> None:
        """The policy's early exit at its last captured layer (module docstring): ``lm_head`` [V,H] the policy's LM
        head, ``final_norm`` [H] its final RMSNorm weight (None: ones)."""
        h = self.sizes["hidden_size"]
        self.fc.weight.zero_()
        self.fc.weight[:, -h:] = torch.eye(h)
        self.midlayer.self_attn.o_proj.weight.zero_()
        self.midlayer.mlp.down_proj.weight.zero_()
        self.norm.weight.copy_(final_norm if final_norm is not None else torch.ones(h))
        self.lm_head.weight.copy_(lm_head.index_select(0, self.draft_ids.to(lm_head.device)))

    # ------------------------------------------------------------------ the pieces EagleHead's chains call
    def forward(self, next_ids: torch.Tensor, hidden: torch.Tensor, valid: torch.Tensor, embed: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """next_ids [B,L] (token p+1), hidden [B,L,3H] (the policy's captured states at p), valid [B,L], embed [V,H]
        -> f [B,L,H] (pre-norm; what vLLM feeds back at the next step)."""
        if positions is None:
            positions = torch.arange(next_ids.shape[1], device=next_ids.device).expand_as(next_ids)
        x, res = self.enter(F.embedding(next_ids, embed).to(hidden.dtype), hidden, True)
        q, k, v = self.midlayer.qkv(x, positions)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.midlayer.hd ** -0.5)
        return self.midlayer.finish(res, attn)

    def enter(self, emb: torch.Tensor, hidden: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.fc(hidden) if first else hidden
        return torch.cat([self.midlayer.input_layernorm(emb), self.midlayer.hidden_norm(g)], -1), g

    def inputs(self, batch: DrafterBatch) -> torch.Tensor:
        if batch.aux_hidden is None:
            raise ValueError("an EAGLE-3 head trains on the policy's captured layer states: the batch has no "
                             "aux_hidden (the trainer's forward was not asked for them)")
        return batch.aux_hidden

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        """Draft logits over the draft vocabulary [..., V_d]."""
        return self.lm_head(self.norm(f))

    def distill(self, f, h_next, lm_head, temperature, cls_weight, reg_weight):
        """KL over the draft vocabulary: ``lm_head`` holds the policy's rows of those tokens. EAGLE-3 has no feature
        regression (its output is not meant to equal a policy state), so ``reg_weight`` is unused."""
        return _distill(f, h_next, self.logits, lm_head, temperature, cls_weight, 0.0)

    # ------------------------------------------------------------------ the checkpoint
    def save(self, folder: str | Path, policy_config: dict) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in the layout vLLM (``method="eagle3"``) and SGLang
        (``--speculative-algorithm EAGLE3``) load: ``LlamaForCausalLMEagle3``, one layer named ``midlayer``, ``fc``,
        ``norm``, ``lm_head`` [V_d,H] and, below the full vocabulary, ``d2t``/``t2d``; no ``embed_tokens`` (both
        engines then share the target's)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {k: v for k, v in policy_config.items() if k not in ("auto_map", "quantization_config")}
        cfg |= {"architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "num_hidden_layers": 1,
                "tie_word_embeddings": False, "head_dim": self.sizes["head_dim"],
                "attention_bias": self.sizes["attention_bias"], "draft_vocab_size": len(self.d2t),
                "target_hidden_size": self.sizes["hidden_size"], "laconic_drafter": "eagle3",
                "laconic_target_layers": self.num_layers}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        if self.full_vocab:
            state.pop("d2t"), state.pop("t2d")
        save_file(state, str(folder / "model.safetensors"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "Eagle3Head":
        from safetensors.torch import load_file

        cfg = json.loads((Path(folder) / "config.json").read_text())
        state = load_file(str(Path(folder) / "model.safetensors"))
        ids = state["d2t"] + torch.arange(len(state["d2t"])) if "d2t" in state else None
        head = cls(llama_sizes(cfg), int(cfg["laconic_target_layers"]), ids)
        if ids is None:  # the whole vocabulary: the export leaves the identity mapping out
            state |= {"d2t": head.d2t.clone(), "t2d": head.t2d.clone()}
        head.load_state_dict(state)
        return head
