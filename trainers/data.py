"""Prompt sources: which problems each rank rolls out, deterministically from the seed.

Rows are dicts with at least ``prompt``, ``answer`` and ``uid``. The global stream visits the training rows
epoch after epoch, epoch e in a permutation seeded by (seed, e). Rank r of W owns global positions
r, r+W, r+2W, ... and keeps a cursor into them: without dynamic sampling every rank takes P/W prompts a step,
so step s covers global positions [s*P, (s+1)*P) whatever W is; with dynamic sampling a rank that needs more
groups simply reads further. The cursor is the only state, and it is checkpointed.
"""
from __future__ import annotations

import random

from rollout.types import Prompt


def to_prompts(rows: list[dict], tokenizer, data_cfg=None) -> list[Prompt]:
    """Tokenize rows once; ``meta`` carries everything but the prompt text. With ``data_cfg`` (``DataConfig``) the
    text is ``data.prompt_template`` filled with the row's prompt and, when ``data.chat_template`` is on, wrapped as
    one user turn (after ``data.system_prompt``'s system turn, when set) by the tokenizer's chat template with the
    assistant turn opened (real reasoning models)."""
    template = data_cfg.prompt_template if data_cfg is not None else "{prompt}"
    chat = bool(data_cfg is not None and data_cfg.chat_template)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ValueError("data.chat_template=true but the model's tokenizer has no chat template")
    out = []
    for i, row in enumerate(rows):
        for key in ("prompt", "answer", "uid"):
            if key not in row:
                raise ValueError(f"data row {i} has no {key!r} field (fields: {sorted(row)})")
        text = template.replace("{prompt}", row["prompt"])  # not str.format: templates may hold "\\boxed{}"
        if chat:
            turns = [{"role": "system", "content": data_cfg.system_prompt}] if data_cfg.system_prompt else []
            text = tokenizer.apply_chat_template(turns + [{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(Prompt(uid=str(row["uid"]), token_ids=ids, meta={k: v for k, v in row.items() if k != "prompt"}))
    return out


class PromptStream:
    def __init__(self, prompts: list[Prompt], seed: int, rank: int = 0, world_size: int = 1) -> None:
        if not prompts:
            raise ValueError("the training set is empty")
        self.prompts, self.seed, self.rank, self.world_size = prompts, seed, rank, world_size
        self.cursor = 0  # positions of this rank consumed so far
        self._perm: tuple[int, list[int]] = (-1, [])

    def _at(self, k: int) -> Prompt:
        n = len(self.prompts)
        epoch = k // n
        if self._perm[0] != epoch:
            order = list(range(n))
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
            self._perm = (epoch, order)
        return self.prompts[self._perm[1][k % n]]

    def take(self, count: int) -> list[Prompt]:
        """The next ``count`` prompts of this rank."""
        out = [self._at(self.rank + self.world_size * (self.cursor + i)) for i in range(count)]
        self.cursor += count
        return out

    @property
    def epoch(self) -> float:
        """Epochs consumed by this rank's share (equal on all ranks without dynamic sampling)."""
        return self.cursor * self.world_size / len(self.prompts)

    def state_dict(self) -> dict:
        return {"cursor": self.cursor, "seed": self.seed, "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["world_size"]) != (self.seed, self.world_size):
            raise ValueError(f"prompt stream saved with seed/ranks {state['seed']}/{state['world_size']}, "
                             f"resumed with {self.seed}/{self.world_size}")
        self.cursor = int(state["cursor"])
