"""The prompt stream resumes exactly, also across epoch boundaries (the verl #7401 bug class): its position is one
cursor per rank, and every epoch's order is a pure function of (seed, epoch)."""
import json

import pytest

from rollout.types import Prompt
from trainers.data import PromptStream

pytestmark = pytest.mark.unit

PROMPTS = [Prompt(uid=f"p{i}", token_ids=[i]) for i in range(10)]


def _uids(batch):
    return [p.uid for p in batch]


def test_resume_across_an_epoch_boundary_continues_the_same_sequence():
    for world in (1, 2):
        for rank in range(world):
            full = PromptStream(PROMPTS, seed=3, rank=rank, world_size=world)
            want = [_uids(full.take(3)) for _ in range(6)]  # 18 per rank: crosses several epoch boundaries
            part = PromptStream(PROMPTS, seed=3, rank=rank, world_size=world)
            got = [_uids(part.take(3)) for _ in range(2)]  # stop mid-epoch (world 1) / past one (world 2)
            state = json.loads(json.dumps(part.state_dict()))  # as the checkpoint stores it
            resumed = PromptStream(PROMPTS, seed=3, rank=rank, world_size=world)
            resumed.load_state_dict(state)
            got += [_uids(resumed.take(3)) for _ in range(4)]
            assert got == want, (world, rank)


def test_every_epoch_covers_each_prompt_once_over_all_ranks_and_reshuffles():
    ranks = [PromptStream(PROMPTS, seed=1, rank=r, world_size=2) for r in range(2)]
    epochs = []
    for _ in range(2):
        seen = [u for s in ranks for u in _uids(s.take(5))]
        assert sorted(seen) == sorted(p.uid for p in PROMPTS)
        epochs.append(seen)
    assert epochs[0] != epochs[1]
    assert all(s.epoch == 2.0 for s in ranks)


def test_prompts_through_a_template_and_the_chat_template():
    from recipes.tasks.tokenizer import build_tokenizer
    from trainers.config import DataConfig
    from trainers.data import to_prompts

    tok = build_tokenizer()
    rows = [{"uid": "a", "prompt": "Start with 7. Add 1.", "answer": "8"}]
    cfg = DataConfig(prompt_template="{prompt} Put it in \\boxed{}.", chat_template=True)
    with pytest.raises(ValueError, match="chat template"):
        to_prompts(rows, tok, cfg)
    tok.chat_template = ("{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}"
                         "{% if add_generation_prompt %}<a>{% endif %}")
    (p,) = to_prompts(rows, tok, cfg)
    assert tok.decode(p.token_ids) == "<u>Start with 7. Add 1. Put it in \\boxed{}.</u><a>"
    assert p.meta == {"uid": "a", "answer": "8"}
    (plain,) = to_prompts(rows, tok)
    assert tok.decode(plain.token_ids) == rows[0]["prompt"]
