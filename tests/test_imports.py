"""Rooms import without vLLM / DeepSpeed (heavy deps live at the edges), and our top-level ``kernels`` package
never shadows the hub ``kernels`` package that transformers probes for."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK = """
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('vllm', 'deepspeed', 'triton', 'wandb'):
            raise ImportError('blocked for the test: ' + name)
sys.meta_path.insert(0, Block())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_every_room_module_imports_without_heavy_deps():
    code = BLOCK + """
import pkgutil, importlib
mods = []
for room in ('laconic', 'kernels', 'rewards', 'rollout', 'drafters', 'trainers', 'recipes'):
    pkg = importlib.import_module(room)
    mods.append(room)
    for m in pkgutil.walk_packages(pkg.__path__, room + '.'):
        importlib.import_module(m.name)
        mods.append(m.name)
import launch
print('OK', len(mods))
# the edges fail, loudly
from rollout import VLLMEngine
from rollout.config import RolloutConfig
try:
    VLLMEngine('/nonexistent', RolloutConfig())
except ImportError as e:
    print('EDGE-ROLLOUT', e)
from trainers.backend.engine import TrainEngine
try:
    TrainEngine(None, None, None, 1, 1)
except ImportError as e:
    print('EDGE-ENGINE', e)
"""
    p = _run(code)
    assert "OK" in p.stdout, p.stderr[-3000:]
    assert int(p.stdout.split("OK ")[1].split()[0]) >= 20
    assert "EDGE-ROLLOUT blocked for the test: vllm" in p.stdout
    assert "EDGE-ENGINE blocked for the test: deepspeed" in p.stdout


def test_transformers_and_vllm_with_repo_on_path_do_not_see_our_kernels():
    code = """
import sys; sys.path.insert(0, '.')
import kernels
assert kernels.__file__.startswith(%r), kernels.__file__
from transformers.utils import is_kernels_available
import transformers, vllm
from transformers import LlamaConfig, LlamaForCausalLM
import torch
m = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2))
out = m(torch.tensor([[1, 2, 3]]))
print('KERNELS_AVAILABLE', is_kernels_available(), tuple(out.logits.shape))
""" % str(ROOT)
    p = _run(code)
    assert "KERNELS_AVAILABLE False (1, 3, 32)" in p.stdout, p.stderr[-3000:]
