"""EAGLE-1 draft head (Li et al. 2024) in plain PyTorch, computing exactly what vLLM's ``EagleLlamaForCausalLM`` does:

    x_p   = fc([embed(token_{p+1}) ; h_p])                      fc: [H, 2H], no bias
    a_p   = x_p + Attn(x_p)        (RoPE at position p, causal over the head's own earlier positions; no input norm)
    f_p   = a_p + MLP(RMSNorm(a_p))                               (SwiGLU MLP, Llama's post-attention norm)
    draft = softmax(W f_p / T)                                    W: the policy's LM head (shared, frozen)

``h_p`` is the policy's final (post-norm) hidden state at position p, ``f_p`` the head's guess of ``h_{p+1}``. After
the first proposal vLLM feeds ``f_p`` back as the next step's hidden state, at position p+1.

The checkpoint is what vLLM loads as ``speculative_config={"method": "eagle", "model": <folder>}``: a Llama config
with the policy's sizes and one layer, and ``fc.weight`` + ``layers.0.*`` (no ``input_layernorm``); with no
``embed_tokens``/``lm_head`` in it, vLLM shares the target's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from drafters.types import DrafterBatch

_ARCH_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size", "rms_norm_eps",
              "rope_theta", "vocab_size", "max_position_embeddings")


def llama_sizes(cfg: dict) -> dict:
    """The architecture numbers the head needs from a Llama/Qwen2-style ``config.json`` dict."""
    missing = [k for k in ("hidden_size", "num_attention_heads", "intermediate_size", "vocab_size") if k not in cfg]
    if missing:
        raise ValueError(f"policy config lacks {missing}: the EAGLE head copies the policy's Llama-style sizes")
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise ValueError(f"EAGLE head supports plain RoPE only, the policy uses {rope}")
    out = {k: cfg.get(k) for k in _ARCH_KEYS}
    out["num_key_value_heads"] = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    out["rms_norm_eps"] = cfg.get("rms_norm_eps", 1e-6)
    out["rope_theta"] = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
    out["head_dim"] = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    out["attention_bias"] = bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2"))
    return out


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope(q: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Neox-style rotary embedding (Llama's ``rotate_half``): q [B,h,L,d], positions [B,L]."""
    d = q.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=q.device) / d))
    ang = positions.to(torch.float32)[:, None, :, None] * inv  # [B,1,L,d/2]
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = q[..., : d // 2], q[..., d // 2:]
    return (q.float() * cos + torch.cat([-x2, x1], -1).float() * sin).to(q.dtype)


class DecoderLayer(torch.nn.Module):
    """A Llama decoder layer with HF parameter names; ``input_norm=False`` is vLLM's EAGLE layer 0 (the fc output
    goes into attention un-normalised)."""

    def __init__(self, s: dict, input_norm: bool = False, in_dim: int = 0) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(s["hidden_size"], s["rms_norm_eps"]) if input_norm else None
        self.norm_input = input_norm  # qkv norms its input (a subclass may own an input_layernorm it applies itself)
        h, nh, nkv, hd = s["hidden_size"], s["num_attention_heads"], s["num_key_value_heads"], s["head_dim"]
        self.nh, self.nkv, self.hd, self.theta = nh, nkv, hd, s["rope_theta"]
        bias, d = s["attention_bias"], in_dim or h  # in_dim: what q/k/v read (EAGLE-3's layer 0: 2H)
        self.self_attn = torch.nn.Module()
        self.self_attn.q_proj = torch.nn.Linear(d, nh * hd, bias=bias)
        self.self_attn.k_proj = torch.nn.Linear(d, nkv * hd, bias=bias)
        self.self_attn.v_proj = torch.nn.Linear(d, nkv * hd, bias=bias)
        self.self_attn.o_proj = torch.nn.Linear(nh * hd, h, bias=False)
        self.post_attention_layernorm = RMSNorm(h, s["rms_norm_eps"])
        self.mlp = torch.nn.Module()
        self.mlp.gate_proj = torch.nn.Linear(h, s["intermediate_size"], bias=False)
        self.mlp.up_proj = torch.nn.Linear(h, s["intermediate_size"], bias=False)
        self.mlp.down_proj = torch.nn.Linear(s["intermediate_size"], h, bias=False)

    def qkv(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B,L,H], positions [B,L] -> q, k, v [B,heads,L,head_dim] (RoPE applied, KV heads repeated)."""
        b, l, _ = x.shape
        a = self.self_attn
        y = self.input_layernorm(x) if self.norm_input else x
        q = rope(a.q_proj(y).view(b, l, self.nh, self.hd).transpose(1, 2), positions, self.theta)
        k = rope(a.k_proj(y).view(b, l, self.nkv, self.hd).transpose(1, 2), positions, self.theta)
        v = a.v_proj(y).view(b, l, self.nkv, self.hd).transpose(1, 2)
        if self.nkv != self.nh:
            k, v = (t.repeat_interleave(self.nh // self.nkv, dim=1) for t in (k, v))
        return q, k, v

    def finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The rest of the layer after attention: output projection, residual ``x``, MLP."""
        b, l, _ = x.shape
        x = x + self.self_attn.o_proj(attn.transpose(1, 2).reshape(b, l, self.nh * self.hd))
        m = self.mlp
        y = self.post_attention_layernorm(x)
        return x + m.down_proj(F.silu(m.gate_proj(y)) * m.up_proj(y))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x [B,L,H], positions [B,L], valid [B,L] bool (right padding only) -> [B,L,H]."""
        q, k, v = self.qkv(x, positions)
        # right padding: a causal mask alone keeps every real position from seeing padding (which only follows it),
        # and lets SDPA use its fused causal kernel; padded positions' outputs are never read
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0 / math.sqrt(self.hd))
        return self.finish(x, attn)


class EagleHead(torch.nn.Module):
    """The trainable head; ``embed`` and ``lm_head`` are the policy's (frozen, not owned, not exported)."""

    method = "eagle"

    def __init__(self, sizes: dict) -> None:
        super().__init__()
        self.sizes = dict(sizes)
        h = sizes["hidden_size"]
        self.fc = torch.nn.Linear(2 * h, h, bias=False)
        self.layers = torch.nn.ModuleList([DecoderLayer(sizes)])
        with torch.no_grad():  # start as "pass the hidden state through": fc = [0 ; I]
            self.fc.weight.zero_()
            self.fc.weight[:, h:] = torch.eye(h)

    def forward(self, next_ids: torch.Tensor, hidden: torch.Tensor, valid: torch.Tensor, embed: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """next_ids [B,L] (token p+1), hidden [B,L,H] (h_p), valid [B,L], embed [V,H] -> f [B,L,H] (guess of h_{p+1})."""
        if positions is None:
            positions = torch.arange(next_ids.shape[1], device=next_ids.device).expand_as(next_ids)
        x = self.fc(torch.cat([F.embedding(next_ids, embed).to(hidden.dtype), hidden], -1))
        for layer in self.layers:
            x = layer(x, positions, valid)
        return x

    # the pieces a subclass with another layer input or output (EAGLE-3) replaces
    def enter(self, emb: torch.Tensor, hidden: torch.Tensor, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's attention input and residual for (embedded next token, hidden). ``first``: ``hidden`` is the
        policy's feature (step 1), else the head's own previous output; EAGLE-1 treats both alike."""
        x = self.fc(torch.cat([emb, hidden], -1))
        return x, x

    def inputs(self, batch: DrafterBatch) -> torch.Tensor:
        """The policy features the head reads at step 1: its final hidden states."""
        return batch.hidden_states

    def distill(self, f: torch.Tensor, h_next: torch.Tensor, lm_head: torch.Tensor, temperature: float,
                cls_weight: float, reg_weight: float) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Loss of outputs ``f`` [N,H] against the policy's next hidden states ``h_next`` [N,H]: KL through the
        policy's head rows ``lm_head`` plus the SmoothL1 regression -> (loss, top-1 agreements, N)."""
        return _distill(f, h_next, lm_head.t(), lm_head, temperature, cls_weight, reg_weight)

    def loss(self, batch: DrafterBatch, embed: torch.Tensor, lm_head: torch.Tensor, temperature: float,
             cls_weight: float, reg_weight: float, depth: int = 1, chains: int = 64
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """EAGLE objective over a batch -> (loss, top-1 agreements, target positions), the last two of step 1.

        Step 1 is teacher-forced: pair p = (token_{p+1}, h_p) predicts ``h_{p+1}``; only pairs whose ``h_{p+1}`` is a
        target position count: ``cls = KL(softmax(W h_{p+1}/T) || softmax(W f_p/T))``, ``reg = SmoothL1(f_p, h_{p+1})``.
        With ``depth`` = D > 1 the head is also trained as vLLM runs it at proposal steps 2..D (the "training-time
        test" of HASS / EAGLE-3), on ``chains`` random proposal rounds per row (see :meth:`chain_outputs`): step i
        at position p reads its own step-(i-1) output instead of ``h_{p-1}``; every step predicts ``h_{p+1}`` with the
        same loss, averaged over steps. Taught only on the policy's features the head drifts off them after one
        proposal: per-position acceptance 0.93 / 0.76 / 0.47 / 0.26 at K = 4 on the tiny task, 0.96 / 0.91 / 0.87 /
        0.83 with D = 4 (benchmarks/rollout_speedup.py)."""
        ids, h, valid = batch.token_ids, self.inputs(batch), batch.valid
        sel = batch.target[:, 1:] & valid[:, 1:]
        h_next = batch.hidden_states[:, 1:]
        if depth <= 1:
            f = self.forward(ids[:, 1:], h[:, :-1], valid[:, 1:], embed)  # [B,L-1,H]
            return self.distill(f[sel], h_next[sel].to(f.dtype), lm_head, temperature, cls_weight, reg_weight)
        length = ids.shape[1] - 1
        n_starts = length - depth + 1
        if n_starts < 1:
            raise ValueError(f"sequences of {length + 1} tokens are too short for drafter.train_depth={depth}")
        if chains >= n_starts:
            starts = torch.arange(n_starts, device=ids.device).expand(ids.shape[0], n_starts)
        else:
            starts = torch.randint(0, n_starts, (ids.shape[0], chains), device=ids.device)
        f1, deeper = self.chain_outputs(ids[:, 1:], h[:, :-1], embed, depth, starts)
        first = self.distill(f1[sel], h_next[sel].to(f1.dtype), lm_head, temperature, cls_weight, reg_weight)
        total = first[0]
        for i, f in enumerate(deeper, start=2):
            p = starts + i - 1
            ok = _take(sel, p)
            total = total + self.distill(f[ok], _take(h_next, p)[ok].to(f.dtype), lm_head, temperature, cls_weight,
                                         reg_weight)[0]
        return total / depth, first[1], first[2]

    def chain_outputs(self, next_ids: torch.Tensor, hidden: torch.Tensor, embed: torch.Tensor, depth: int,
                      starts: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Proposal rounds as vLLM runs them. ``next_ids`` [B,L] (token p+1 at p), ``hidden`` [B,L,H] (h_p),
        ``starts`` [B,M]: the last verified position s of each round. -> (step 1, teacher-forced, at every position
        [B,L,H]; [f_i [B,M,H] for i = 2..depth]), f_i being step i at position s + i - 1: its input is (token
        s + i, f_{i-1}), and it attends to the teacher-forced keys of positions <= s (the verified prefix, whose KV
        the drafter wrote from the policy's hidden states) and to the keys of steps 2..i of its own round."""
        b, l = next_ids.shape
        layer = self.layers[0]
        scale = 1.0 / math.sqrt(layer.hd)
        emb = F.embedding(next_ids, embed).to(hidden.dtype)
        positions = torch.arange(l, device=next_ids.device).expand(b, l)
        x1, res1 = self.enter(emb, hidden, True)
        q1, k1, v1 = layer.qkv(x1, positions)
        f1 = layer.finish(res1, F.scaled_dot_product_attention(q1, k1, v1, is_causal=True, scale=scale))
        prefix = torch.arange(l, device=next_ids.device)[None, None, None, :] <= starts[:, None, :, None]  # [B,1,M,L]
        feats, keys, values, out = _take(f1, starts), [], [], []
        for i in range(2, depth + 1):
            p = starts + i - 1
            x, res = self.enter(_take(emb, p), feats, False)  # [B,M,*]
            q, k, v = layer.qkv(x, p)
            keys.append(k)
            values.append(v)
            scores = [(q @ k1.transpose(-1, -2) * scale).masked_fill(~prefix, float("-inf"))]  # [B,h,M,L]
            scores += [(q * kk).sum(-1, keepdim=True) * scale for kk in keys]  # this round's keys, steps 2..i
            w = torch.softmax(torch.cat(scores, -1).float(), -1).to(q.dtype)
            att = w[..., :l] @ v1
            for m, vv in enumerate(values):
                att = att + w[..., l + m, None] * vv
            feats = layer.finish(res, att)
            out.append(feats)
        return f1, out

    # ------------------------------------------------------------------ the vLLM checkpoint
    def save(self, folder: str | Path, policy_config: dict) -> Path:
        """Write ``config.json`` + ``model.safetensors`` in the layout vLLM loads as an EAGLE speculator."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {k: v for k, v in policy_config.items() if k not in ("auto_map", "quantization_config")}
        cfg |= {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 1,
                "tie_word_embeddings": False, "head_dim": self.sizes["head_dim"],
                "attention_bias": self.sizes["attention_bias"], "laconic_drafter": "eagle"}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2))
        state = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "EagleHead":
        from safetensors.torch import load_file

        cfg = json.loads((Path(folder) / "config.json").read_text())
        head = cls(llama_sizes(cfg))
        head.load_state_dict(load_file(str(Path(folder) / "model.safetensors")))
        return head


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B,L,...] at positions idx [B,M] -> [B,M,...]."""
    index = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def _distill(f: torch.Tensor, h_next: torch.Tensor, draft_logits, lm_head: torch.Tensor, temperature: float,
             cls_weight: float, reg_weight: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """KL(policy || draft) at ``temperature`` over the rows of ``lm_head`` (the policy's distribution from
    ``h_next``), plus ``reg_weight`` x SmoothL1(f, h_next) when positive. ``draft_logits``: a [H,V'] matrix the draft
    logits are ``f @``, or a callable ``f -> logits``. -> (loss, top-1 agreements, N)."""
    n = f.shape[0]
    if n == 0:
        return f.sum() * 0.0, torch.zeros((), dtype=torch.long), 0
    target_logp = F.log_softmax((h_next @ lm_head.t()).float() / temperature, -1)
    logits = draft_logits(f) if callable(draft_logits) else f @ draft_logits
    draft_logp = F.log_softmax(logits.float() / temperature, -1)
    loss = cls_weight * F.kl_div(draft_logp, target_logp, log_target=True, reduction="sum") / n
    if reg_weight > 0:
        loss = loss + reg_weight * F.smooth_l1_loss(f.float(), h_next.float(), reduction="mean")
    agree = (draft_logp.argmax(-1) == target_logp.argmax(-1)).sum()
    return loss, agree, n
