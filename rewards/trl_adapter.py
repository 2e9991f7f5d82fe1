"""Any sequence-level Laconic reward term as a TRL ``GRPOTrainer`` ``reward_funcs`` callable.

TRL calls ``fn(prompts=[...], completions=[...], completion_ids=[[...]], **dataset_columns)`` with the group's
completions adjacent and returns one float per completion. Rows with the same prompt form a group; a completion
without the EOS token that is as long as ``max_completion_length`` counts as truncated (its length is the cap).
Stateful terms (HAPO, CEEH) keep their state in the adapter and update it after every call, as Laconic's trainer
does. Rollout transforms (DOT) are refused: TRL cannot cut its completions' loss masks to the kept tokens.

Example::

    reward = TRLReward("shorterbetter", RewardConfig(), max_completion_length=512, eos_token_id=tok.eos_token_id)
    GRPOTrainer(model=..., reward_funcs=[reward], ...)   # the dataset needs an "answer" column
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from rewards.registry import STATE_TYPES, TERMS, apply, compute, make_states, observe
from rewards.types import RewardInput

if TYPE_CHECKING:
    from rewards.config import RewardConfig


class TRLReward:
    def __init__(self, term: str, cfg: RewardConfig | None = None, max_completion_length: int = 512,
                 eos_token_id: int | None = None, weight: float = 1.0) -> None:
        if term not in TERMS:
            raise KeyError(f"unknown reward term {term!r}; registered: {sorted(TERMS)}")
        from rewards.config import RewardConfig

        base = cfg or RewardConfig()
        if base.transforms:
            raise ValueError(f"reward.transforms={base.transforms} rewrite completions; TRLReward cannot apply them")
        self.cfg = RewardConfig(**{**base.__dict__, "terms": {term: weight}})
        self.states = make_states(self.cfg)
        self.max_len, self.eos = max_completion_length, eos_token_id
        self.__name__ = f"laconic_{term}"  # TRL logs rewards under the callable's name
        self.stateful = term in STATE_TYPES

    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]] | None = None,
                 **columns) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        ids = completion_ids or [[0] * len(t) for t in texts]
        n = torch.tensor([len(x) for x in ids])
        truncated = torch.tensor([len(x) >= self.max_len and (self.eos is None or self.eos not in x) for x in ids])
        keys = [p if isinstance(p, str) else str(p) for p in prompts]
        group = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        meta = [{"answer": str(columns["answer"][i]), "uid": str(columns.get("uid", keys)[i])}
                | ({"target_tokens": columns["target_tokens"][i]} if "target_tokens" in columns else {})
                for i in range(len(texts))]
        inp = RewardInput(completions=texts, num_tokens=torch.where(truncated, torch.tensor(self.max_len), n),
                          truncated=truncated, group_ids=torch.tensor([group[k] for k in keys]), meta=meta,
                          max_tokens=self.max_len)
        out = compute(inp, self.cfg, self.states)
        if self.stateful:
            apply(self.states, [observe(out.input, self.states)])
        return out.total.tolist()
