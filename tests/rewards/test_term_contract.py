"""The reward-term contract: a term is one file that declares its config section, its validation and its state in
``register_term``; ``reward.terms`` holds its only weight. Adding one is one file (and its test)."""
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]

TERM_FILE = '''
from __future__ import annotations

from dataclasses import dataclass

import torch

from rewards.registry import register_term


@dataclass
class BrevityConfig:
    limit: int = 200  # tokens at which the bonus reaches 0


def _validate(c: BrevityConfig) -> None:
    if c.limit <= 0:
        raise ValueError(f"reward.brevity.limit={c.limit} must be > 0")


@register_term("brevity", config=BrevityConfig, validate=_validate)
def brevity(inp, cfg) -> torch.Tensor:
    return inp.correct.float() * (1.0 - inp.num_tokens.float() / cfg.brevity.limit).clamp(min=0)
'''

CHECK = '''
import torch
from recipes.loader import load
from trainers.config import validate
from rewards import RewardInput, compute

cfg, _ = load("tiny_grpo", ["reward.terms={correctness: 1.0, brevity: 0.5}", "reward.brevity.limit=100"])
validate(cfg)
inp = RewardInput(completions=["", ""], num_tokens=torch.tensor([50, 150]), truncated=torch.zeros(2, dtype=torch.bool),
                  group_ids=torch.tensor([0, 1]), meta=[{"answer": "1", "uid": "a"}, {"answer": "1", "uid": "b"}],
                  correct=torch.tensor([True, True]))
print("TOTAL", compute(inp, cfg.reward).total.tolist())
cfg, _ = load("tiny_grpo", ["reward.terms={brevity: 1.0}", "reward.brevity.limit=0"])
try:
    validate(cfg)
except ValueError as e:
    print("REFUSED", e)
'''


def test_a_new_term_is_one_file(tmp_path):
    shutil.copytree(ROOT / "rewards", tmp_path / "rewards", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "rewards" / "brevity.py").write_text(textwrap.dedent(TERM_FILE))
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    # correct rows: 1 + .5 * (1 - 50/100) = 1.25; 1 + .5 * 0 = 1.0
    assert "TOTAL [1.25, 1.0]" in p.stdout
    assert "REFUSED reward.brevity.limit=0 must be > 0" in p.stdout


def test_terms_carry_no_weight_of_their_own():
    import dataclasses

    from rewards.config import RewardConfig
    from rewards.registry import SECTIONS

    assert {"hapo", "decs", "lcpo_exact", "lcpo_max", "shorterbetter", "ceeh", "correctness", "dot"} <= set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert "weight" not in {f.name for f in dataclasses.fields(cls)}, name
    assert {f.name for f in dataclasses.fields(RewardConfig)} >= set(SECTIONS) | {"terms", "transforms"}


def test_a_section_is_declared_once():
    from dataclasses import dataclass

    from rewards.registry import register_term

    @dataclass
    class Again:
        x: int = 1

    with pytest.raises(ValueError, match="already registered|already declared"):
        register_term("hapo", config=Again)(lambda inp, cfg: None)
