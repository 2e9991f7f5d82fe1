"""The drafter trained online from the RL loop's own rollouts (TLT-style, Hu et al. 2025).

Every RL step adds the step's sequences with the policy's hidden states (from the trainer's forward, no second
pass) to a replay window of the last ``replay_steps`` steps; :meth:`OnlineDrafter.train` then takes optimizer steps
on random mini-batches of that window until its budget is spent or ``should_stop()`` says the idle window closed.
The EAGLE head reads the policy's embedding and LM head, which change every step: :meth:`set_policy_tensors`
hands it the current ones before training, and the export never contains them (vLLM shares the target's).

Speculative sampling is lossless, so nothing the drafter does changes what the policy learns; only speed.
"""
from __future__ import annotations

import json
import random
import time
from collections import deque
from pathlib import Path
from typing import Callable

import torch

from drafters.config import DrafterConfig
from drafters.draft_lm import DraftLM
from drafters.eagle import EagleHead, llama_sizes
from drafters.eagle3 import Eagle3Head
from drafters.types import DrafterBatch, DrafterExport, DrafterStats


_SIZE_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
              "vocab_size")


METHODS = ("eagle", "eagle3", "draft_model")


def _draft_vocab(policy_config: dict, train_vocab: int) -> torch.Tensor | None:
    """An EAGLE-3 head's draft vocabulary before any rows are counted: the first ``train_vocab`` ids (replaced at the
    first training by the most used tokens), or None for the whole vocabulary."""
    v = int(policy_config["vocab_size"])
    return torch.arange(train_vocab) if 0 < train_vocab < v else None


def new_head(method: str, policy_config: dict, train_vocab: int = 0) -> torch.nn.Module:
    """A fresh EAGLE / EAGLE-3 head for the policy described by ``policy_config``."""
    sizes = llama_sizes(policy_config)
    if method == "eagle3":
        return Eagle3Head(sizes, int(policy_config["num_hidden_layers"]), _draft_vocab(policy_config, train_vocab))
    return EagleHead(sizes)


def read_weights(folder: str | Path, policy_config: dict, method: str, train_vocab: int = 0) -> dict:
    """The weights of a drafter checkpoint (``drafter.init``: a Laconic export, or an EAGLE-1 / EAGLE-3 head in
    vLLM's layout such as a published one), checked against the policy before anything uses them: the folder holds
    ``config.json`` + ``model.safetensors``, the method matches, the sizes are the policy's and the tensors are the
    ones the head has (an EAGLE-3 head's draft vocabulary: ``train_vocab`` tokens). Raises ValueError naming the
    folder and what differs."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg_path, weights = folder / "config.json", folder / "model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ValueError(f"drafter.init={str(folder)!r} is not a drafter checkpoint (needs config.json and "
                         f"model.safetensors)")
    cfg = json.loads(cfg_path.read_text())
    kind = cfg.get("laconic_drafter") or ("eagle3" if any("Eagle3" in a for a in cfg.get("architectures", []))
                                           else "eagle")
    if kind != method:
        raise ValueError(f"drafter.init={str(folder)!r} is a {kind!r} drafter; this run's drafter.method is {method!r}")
    mine, theirs = llama_sizes(policy_config), llama_sizes(cfg)
    differ = {k: (theirs[k], mine[k]) for k in _SIZE_KEYS if theirs[k] != mine[k]}
    if differ:
        raise ValueError(f"drafter.init={str(folder)!r} was made for another model: (its, the policy's) {differ}")
    state = load_file(str(weights))
    if method == "eagle3":
        v, vd = int(policy_config["vocab_size"]), int(cfg.get("draft_vocab_size") or cfg["vocab_size"])
        want_vd = train_vocab if 0 < train_vocab < v else v
        if vd != want_vd:
            raise ValueError(f"drafter.init={str(folder)!r} drafts over {vd} tokens; this run's drafter.train_vocab="
                             f"{train_vocab} asks for {want_vd}")
        if vd < v and "d2t" not in state:
            raise ValueError(f"drafter.init={str(folder)!r}: a draft vocabulary of {vd} < {v} tokens needs its d2t "
                             f"mapping in {weights.name}")
        if "d2t" not in state:  # the whole vocabulary: the identity mapping is left out of exports
            state |= {"d2t": torch.zeros(v, dtype=torch.long), "t2d": torch.ones(v, dtype=torch.bool)}
        state = {k.replace("layers.0.", "midlayer."): t for k, t in state.items()}  # vLLM's name for the one layer
    expected = new_head(method, policy_config, train_vocab).state_dict() if method != "draft_model" else None
    if expected is not None:
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        want = {k: tuple(v.shape) for k, v in expected.items()}
        if shapes != want:
            missing, extra = sorted(set(want) - set(shapes)), sorted(set(shapes) - set(want))
            wrong = sorted(k for k in set(want) & set(shapes) if want[k] != shapes[k])
            raise ValueError(f"drafter.init={str(folder)!r}: {weights.name} does not hold an {method} head for this "
                             f"policy (missing {missing[:4]}, unexpected {extra[:4]}, wrong shape {wrong[:4]})")
    return state


class OnlineDrafter:
    def __init__(self, cfg: DrafterConfig, policy_config: dict, embed: torch.Tensor, lm_head: torch.Tensor,
                 temperature: float, seed: int = 0, final_norm: torch.Tensor | None = None) -> None:
        """``final_norm``: the policy's final RMSNorm weight, where an EAGLE-3 head starts (its early exit)."""
        if cfg.method not in METHODS:
            raise ValueError(f"drafter.method={cfg.method!r} is not one of {sorted(METHODS)}")
        self.cfg, self.policy_config, self.temperature = cfg, dict(policy_config), temperature
        torch.manual_seed(seed)
        if cfg.method == "draft_model":
            self.model = DraftLM.from_policy(policy_config, cfg.draft_layers, cfg.draft_hidden, embed, lm_head)
        else:
            self.model = new_head(cfg.method, policy_config, cfg.train_vocab)
        self.model.to(embed.device)
        # an EAGLE-3 head's draft vocabulary is chosen once, from the rows' counts at the first training (fix_vocab)
        self.vocab_fixed = cfg.method != "eagle3" or self.model.full_vocab
        if cfg.method == "eagle3":
            self.model.start_from_policy(lm_head, final_norm)
        depth = min(cfg.train_depth, cfg.num_speculative_tokens)  # steps past K are never proposed
        self._loss_kw = {"depth": depth, "chains": cfg.train_chains} if cfg.method != "draft_model" else {}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.embed, self.lm_head = embed.detach(), lm_head.detach()
        self.token_counts = torch.zeros(lm_head.shape[0], dtype=torch.long)  # tokens of every row added (train_vocab)
        self.window: deque[list[tuple]] = deque(maxlen=cfg.replay_steps)  # per RL step: rows (ids, hidden, target)
        self.rng = random.Random(seed)
        self.version = 0
        self.total_steps = 0
        self.lr_ramp = 0  # > 0: the first lr_ramp optimizer steps ramp the learning rate up to cfg.lr (loaded weights)

    @property
    def feature_layers(self) -> tuple[int, ...]:
        """Policy layers whose output the drafter reads beside the final hidden state (EAGLE-3), else ()."""
        return tuple(getattr(self.model, "aux_layers", ()))

    # ------------------------------------------------------------------ data
    def set_policy_tensors(self, embed: torch.Tensor, lm_head: torch.Tensor) -> None:
        """The policy's current input embedding [V,H] and LM head [V,H] (detached; never trained here)."""
        self.embed, self.lm_head = embed.detach(), lm_head.detach()

    def new_step(self) -> None:
        """Open the replay slot of a new RL step (the oldest step falls out of the window)."""
        self.window.append([])

    def widen(self, slots: int) -> None:
        """Let the replay window hold ``slots`` RL steps (never fewer than it holds now)."""
        if slots > (self.window.maxlen or 0):
            self.window = deque(self.window, maxlen=slots)

    def add(self, batch: DrafterBatch) -> None:
        """Keep up to ``max_rows_per_step`` rows of this step (a random subset), each trimmed to its length."""
        if not self.window:
            self.new_step()
        slot = self.window[-1]
        for i in range(batch.token_ids.shape[0]):
            if len(slot) >= self.cfg.max_rows_per_step and self.rng.random() > 0.5:
                continue
            n = int(batch.valid[i].sum())
            if not bool(batch.target[i, :n].any()):
                continue
            aux = None if batch.aux_hidden is None else batch.aux_hidden[i, :n].detach().cpu()
            row = (batch.token_ids[i, :n].cpu(), batch.hidden_states[i, :n].detach().cpu(), batch.target[i, :n].cpu(),
                   aux)
            self.token_counts += torch.bincount(row[0].clamp(0, len(self.token_counts) - 1),
                                                minlength=len(self.token_counts))
            if len(slot) < self.cfg.max_rows_per_step:
                slot.append(row)
            else:
                slot[self.rng.randrange(len(slot))] = row

    def rows(self) -> int:
        return sum(len(s) for s in self.window)

    def _minibatch(self) -> DrafterBatch:
        pool = [r for s in self.window for r in s]
        picks = self.rng.sample(pool, min(self.cfg.batch_rows, len(pool)))
        width = max(r[0].shape[0] for r in picks)
        h = picks[0][1].shape[1]
        ids = torch.zeros(len(picks), width, dtype=torch.long)
        hid = torch.zeros(len(picks), width, h, dtype=picks[0][1].dtype)
        valid = torch.zeros(len(picks), width, dtype=torch.bool)
        target = torch.zeros(len(picks), width, dtype=torch.bool)
        aux = None if picks[0][3] is None else torch.zeros(len(picks), width, picks[0][3].shape[1],
                                                            dtype=picks[0][3].dtype)
        for i, (a, b, c, d) in enumerate(picks):
            n = a.shape[0]
            ids[i, :n], hid[i, :n], valid[i, :n], target[i, :n] = a, b, True, c
            if aux is not None:
                aux[i, :n] = d
        dev = self.embed.device
        return DrafterBatch(ids.to(dev), hid.to(dev), valid.to(dev), target.to(dev),
                            None if aux is None else aux.to(dev))

    # ------------------------------------------------------------------ training
    def fix_vocab(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Choose an EAGLE-3 head's draft vocabulary, once: the ``drafter.train_vocab`` tokens the rows added so far
        use most (``reduce``: sum the counts over ranks first, so every rank picks the same tokens), its LM-head rows
        started from the policy's. A no-op once chosen, for other heads, or before any row was added."""
        if self.vocab_fixed or not bool(self.token_counts.any()):
            return
        counts = self.token_counts if reduce is None else reduce(self.token_counts.clone())
        keep = torch.topk(counts, len(self.model.d2t)).indices.sort().values
        m = self.model
        with torch.no_grad():
            m.d2t.copy_(keep - torch.arange(len(keep)))
            m.t2d.zero_().index_fill_(0, keep, True)
            m.lm_head.weight.copy_(self.lm_head.index_select(0, keep.to(self.lm_head.device)))
        self.vocab_fixed = True

    def distill_head(self) -> torch.Tensor:
        """The LM-head rows the loss distils over: all of them, or with ``drafter.train_vocab`` = N the N most used
        tokens of the rows added so far (rows [N,H], ordered by token id; all rows while none has been added); an
        EAGLE-3 head's: the policy's rows of its draft vocabulary."""
        if self.cfg.method == "eagle3":
            return self.lm_head.index_select(0, self.model.draft_ids.to(self.lm_head.device))
        n = self.cfg.train_vocab
        if not n or n >= self.lm_head.shape[0] or not bool(self.token_counts.any()):
            return self.lm_head
        keep = torch.topk(self.token_counts, n).indices.sort().values.to(self.lm_head.device)
        return self.lm_head.index_select(0, keep)

    def train(self, budget_s: float, max_steps: int, should_stop: Callable[[], bool] | None = None) -> DrafterStats:
        """Optimizer steps until ``budget_s`` seconds or ``max_steps`` steps or ``should_stop()``; returns stats."""
        t0 = time.perf_counter()
        self.fix_vocab()
        self.model.train()
        steps, tokens, agree, loss_sum = 0, 0, 0, 0.0
        head = self.distill_head()
        while self.rows() and steps < max_steps and time.perf_counter() - t0 < budget_s:
            if should_stop is not None and should_stop():
                break
            loss, a, n = self.model.loss(self._minibatch(), self.embed, head, self.temperature,
                                         self.cfg.cls_weight, self.cfg.reg_weight, **self._loss_kw)
            if n == 0:
                break
            if self.lr_ramp:
                for g in self.opt.param_groups:
                    g["lr"] = self.cfg.lr * min(1.0, (self.total_steps + steps + 1) / self.lr_ramp)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            steps, tokens, agree, loss_sum = steps + 1, tokens + n, agree + int(a), loss_sum + float(loss.detach())
        if steps:
            self.version += 1
            self.total_steps += steps
        return DrafterStats(loss=loss_sum / max(steps, 1), top1_agreement=agree / max(tokens, 1),
                            train_s=time.perf_counter() - t0, steps=steps, tokens=tokens)

    @torch.no_grad()
    def evaluate(self, batch: DrafterBatch) -> DrafterStats:
        """Loss and top-1 agreement on a batch, without training."""
        self.model.eval()
        t0 = time.perf_counter()
        loss, a, n = self.model.loss(batch, self.embed, self.distill_head(), self.temperature, self.cfg.cls_weight,
                                     self.cfg.reg_weight, **self._loss_kw)
        return DrafterStats(loss=float(loss), top1_agreement=int(a) / max(n, 1), train_s=time.perf_counter() - t0,
                            steps=0, tokens=n)

    def average_with(self, reduce_mean: Callable[[torch.Tensor], torch.Tensor], weight: float) -> None:
        """Combine the ranks' drafters: each parameter becomes the ``weight``-weighted mean over ranks (weight = the
        optimizer steps a rank took; all-zero weights leave the parameters as they are)."""
        total = float(reduce_mean(torch.tensor([weight], dtype=torch.float64))[0])
        if total <= 0:
            return
        for p in self.model.parameters():
            p.data.copy_(reduce_mean(p.data.to(torch.float64) * weight).to(p.dtype) / total)

    # ------------------------------------------------------------------ export and state
    def export(self, folder: str | Path) -> DrafterExport:
        k = self.cfg.num_speculative_tokens
        path = self.model.save(folder, self.policy_config | {"laconic_num_speculative_tokens": k})
        return DrafterExport(self.model.method, k, str(path), self.version)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "version": self.version,
                "total_steps": self.total_steps, "rng": self.rng.getstate(), "token_counts": self.token_counts.clone(),
                "vocab_fixed": self.vocab_fixed, "lr_ramp": self.lr_ramp}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.version, self.total_steps = int(state["version"]), int(state["total_steps"])
        self.lr_ramp = int(state.get("lr_ramp", 0))
        self.rng.setstate(state["rng"])
        if "token_counts" in state:  # checkpoints written before drafter.train_vocab existed have none
            self.token_counts = state["token_counts"].clone()
        self.vocab_fixed = bool(state.get("vocab_fixed", self.vocab_fixed))
