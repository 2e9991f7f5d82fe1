"""The Triton backend under Triton's CPU interpreter (in a child process, see triton_interpreter_cases.py) and on a
GPU when there is one."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import logprobs_from_hidden, resolve_backend

pytest.importorskip("triton", reason="the triton package is not installed")

ROOT = Path(__file__).resolve().parents[2]
CASES_PATH = Path(__file__).with_name("triton_interpreter_cases.py")
_spec = importlib.util.spec_from_file_location("triton_interpreter_cases", CASES_PATH)
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)


@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    """{case: None | traceback} from one child process with TRITON_INTERPRET=1 set before triton is imported."""
    env = os.environ | {"TRITON_INTERPRET": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                                                            os.environ.get("PYTHONPATH")]))}
    p = subprocess.run([sys.executable, str(CASES_PATH)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, f"interpreter child failed (exit {p.returncode}):\n{p.stderr[-5000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", cases.CASES)
def test_triton_backend_in_interpreter(interpreter_results, name):
    assert name in interpreter_results, f"{name} did not run in the child"
    assert interpreter_results[name] is None, interpreter_results[name]


def test_interpreter_switched_on_after_import_is_a_clear_error(monkeypatch):
    import triton.language as tl

    if type(tl.max).__name__ == "InterpretedFunction":
        pytest.skip("this process imported triton with TRITON_INTERPRET already on")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="before the first `import triton`"):
        logprobs_from_hidden(torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long), backend="triton")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_triton_backend_matches_reference_on_gpu(dtype, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    tol = (1e-4, 1e-5) if dtype == torch.float32 else (2e-2, 2e-2)
    for n, v, chunk in [(1, 50257, 64), (777, 32000, 256), (300, 151936, 128)]:
        case = cases.make_case(n, v, 256, seed=n, dtype=dtype, device="cuda")
        cases.assert_triton_matches_reference(case, 0.8, chunk, grad_tol=tol)


@pytest.mark.gpu
@cuda
def test_auto_backend_is_triton_on_gpu():
    assert resolve_backend("auto", torch.zeros(1, device="cuda")) == "triton"
