"""Policy log-probs of sampled completion tokens: one backbone forward, then the memory-lean kernel.

Sequence b is ``prompt_b + completion_b`` right-padded. The hidden state at position p predicts token p+1,
so completion token t of row b (at position ``Lp_b + t``) is scored from hidden position ``Lp_b + t - 1``.
Only the ``[N, H]`` hidden rows of valid completion tokens reach the LM head.
"""
from __future__ import annotations

import torch

from dataclasses import dataclass

from drafters.types import DrafterBatch
from kernels import logprobs_from_hidden
from trainers.backend.models import decoder, lm_head


@dataclass(frozen=True)
class Features:
    """The trainer forward's view of whole sequences, kept (detached) for the drafter: free, no second pass."""

    input_ids: torch.Tensor  # [B,L] long: prompt + completion, right-padded
    hidden: torch.Tensor  # [B,L,H]: policy's final (post-norm) hidden state at every position (detached)
    valid: torch.Tensor  # [B,L] bool: real tokens
    prompt_lens: torch.Tensor  # [B] long
    completion_lens: torch.Tensor  # [B] long
    aux: torch.Tensor | None = None  # [B,L,A*H]: the residual stream after each of ``aux_layers`` layers (EAGLE-3)

    def to_drafter_batch(self) -> DrafterBatch:
        """Targets: positions q = prompt_len .. prompt_len + n - 2, whose hidden states predict completion tokens
        1 .. n-1 (what the drafter proposes after the engine has sampled completion token 0 from the prefill)."""
        q = torch.arange(self.input_ids.shape[1])[None, :]
        lp, n = self.prompt_lens[:, None], self.completion_lens[:, None]
        target = (q >= lp) & (q <= lp + n - 2)
        return DrafterBatch(self.input_ids, self.hidden, self.valid, target, self.aux)


def build_inputs(prompt_ids: list[list[int]], completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> input_ids [B,L], attention_mask [B,L], score_pos [B,T] (hidden index scoring each completion token)."""
    b, t = completion_ids.shape
    lens = completion_mask.sum(-1).tolist()
    width = max(len(p) + n for p, n in zip(prompt_ids, lens))
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    pos = torch.zeros((b, t), dtype=torch.long)
    for i, (p, n) in enumerate(zip(prompt_ids, lens)):
        lp = len(p)
        ids[i, :lp] = torch.tensor(p, dtype=torch.long)
        ids[i, lp:lp + n] = completion_ids[i, :n]
        attn[i, :lp + n] = 1
        pos[i] = torch.arange(lp - 1, lp - 1 + t).clamp(max=width - 1)
    return ids, attn, pos


def completion_logprobs(model: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                        completion_mask: torch.Tensor, pad_id: int, temperature: float, chunk: int = 0,
                        through_head_module: bool = False, backend: str = "auto",
                        aux_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> logprobs [B,T], entropy [B,T] (0 on padding), :class:`Features` of the whole sequences (for the drafter).

    ``through_head_module`` calls the LM head as a module (so ZeRO-3's gather hooks run) and scores its
    ``[N,V]`` logits with the reference twin; otherwise the head's weight goes to the chunked kernel.
    ``aux_layers`` (k < number of layers): also keep the residual stream after k layers, concatenated, in
    ``Features.aux`` (HF's ``hidden_states[k]``: what vLLM captures for EAGLE-3 after layer k).
    """
    device = next(model.parameters()).device
    ids, attn, pos = build_inputs(prompt_ids, completion_ids, completion_mask, pad_id)
    out = decoder(model)(input_ids=ids.to(device), attention_mask=attn.to(device),
                         output_hidden_states=bool(aux_layers))
    hidden_all = out.last_hidden_state  # [B,L,H]
    aux = torch.cat([out.hidden_states[k] for k in aux_layers], -1).detach() if aux_layers else None
    hidden = hidden_all.gather(1, pos.to(device)[..., None].expand(-1, -1, hidden_all.shape[-1]))  # [B,T,H]
    mask = completion_mask.to(device)
    head, rows, ids_flat = lm_head(model), hidden[mask], completion_ids.to(device)[mask]
    if through_head_module:
        logp_all = torch.log_softmax(head(rows).float() / temperature, dim=-1)
        lp_flat = logp_all.gather(-1, ids_flat[:, None]).squeeze(-1)
        ent_flat = -(logp_all.exp() * logp_all).sum(-1)
    else:
        lp_flat, ent_flat = logprobs_from_hidden(rows, head.weight, ids_flat, temperature=temperature,
                                                 chunk=chunk or None, backend=backend)
    logprobs = torch.zeros(mask.shape, dtype=torch.float32, device=device).masked_scatter(mask, lp_flat)
    entropy = torch.zeros(mask.shape, dtype=torch.float32, device=device).masked_scatter(mask, ent_flat)
    feats = Features(ids, hidden_all.detach(), attn.bool(), torch.tensor([len(p) for p in prompt_ids]),
                     completion_mask.sum(-1), aux)
    return logprobs, entropy, feats


def completion_values(critic: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                      completion_mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """-> values [B,T] float32 (0 on padding): ``V_t`` = the critic's value of the state *before* completion token
    t, read at the same hidden position that scores token t (so GAE's ``V_t`` and the policy's ``logp_t`` align)."""
    device = next(critic.parameters()).device
    ids, attn, pos = build_inputs(prompt_ids, completion_ids, completion_mask, pad_id)
    v_all = critic(ids.to(device), attn.to(device))  # [B,L]
    v = v_all.gather(1, pos.to(device))
    return v * completion_mask.to(device)


@torch.no_grad()
def greedy_agreement(model: torch.nn.Module, prompt_ids: list[list[int]], completion_ids: torch.Tensor,
                     completion_mask: torch.Tensor, pad_id: int,
                     tie_tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced check of a greedy completion against ``model``: -> (is_argmax [N] bool, logprob [N]) over the
    valid completion tokens (a token within ``tie_tol`` nats of the maximum counts as argmax: two kernels may break a
    near-tie differently). Every token being the model's argmax is exactly "the model's greedy decoding produces
    this completion", without calling ``generate`` (which ZeRO-3-partitioned modules must not). The LM head runs
    as a module, so ZeRO-3's gather hooks fire; meant for a few probe rows (it holds their [N,V] logits)."""
    device = next(model.parameters()).device
    ids, attn, pos = build_inputs(prompt_ids, completion_ids, completion_mask, pad_id)
    hidden_all = decoder(model)(input_ids=ids.to(device), attention_mask=attn.to(device)).last_hidden_state
    hidden = hidden_all.gather(1, pos.to(device)[..., None].expand(-1, -1, hidden_all.shape[-1]))
    mask = completion_mask.to(device)
    logp = torch.log_softmax(lm_head(model)(hidden[mask]).float(), dim=-1)  # [N,V]
    chosen = logp.gather(-1, completion_ids.to(device)[mask][:, None]).squeeze(-1)
    return chosen >= logp.max(-1).values - tie_tol, chosen
