"""Shared fixtures: the embedded base model (built once, cached under $LACONIC_CACHE), a one-rank group, and a
runner for ``launch.py`` in a fresh process."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")

ROOT = Path(__file__).resolve().parents[1]
# torch.distributed rendezvous variables: in-process gloo groups of earlier tests set them in os.environ, and a
# child that inherits them tries to listen on a port this process already holds (EADDRINUSE)
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID")


def shell_env(**extra: str) -> dict:
    """The environment a user's shell would give a new process: ours minus the process-group variables."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.setdefault("LACONIC_CACHE", str(Path.home() / ".cache" / "laconic"))
    return env | extra


@pytest.fixture(scope="session")
def run_cmd():
    """``run_cmd(argv, check=True, timeout=900)`` runs a command from the repo root in a shell-like environment;
    with ``check`` a non-zero exit fails the test with the tail of both streams."""

    def run(argv: list[str], check: bool = True, timeout: int = 900, **env: str) -> subprocess.CompletedProcess:
        p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=shell_env(**env))
        if check:
            assert p.returncode == 0, f"exit {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-5000:]}"
        return p

    return run


@pytest.fixture(scope="session")
def launch(run_cmd):
    """``launch(*args, check=True)`` = ``python launch.py *args`` in a fresh process."""

    def run(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
        return run_cmd([sys.executable, "launch.py", *args], check=check, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def base_model_dir() -> str:
    """The default tiny overthinking base model (the one recipes use), built on first use and cached."""
    from recipes.tasks.base_model import ensure_base_model
    from recipes.tasks.cache import build_lock

    with build_lock():
        return str(ensure_base_model())


@pytest.fixture(scope="module")
def one_rank():
    """This process's place in the live default group (made if there is none): per module, because a vLLM engine of
    an earlier test may have destroyed the group, or another library made a new one."""
    from trainers.backend import distributed

    return distributed.init("gloo")
