"""Shared fixtures: the embedded base model (built once, cached under $LACONIC_CACHE) and a one-rank group."""
import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def base_model_dir() -> str:
    """The default tiny overthinking base model (the one recipes use), built on first use and cached."""
    from recipes.tasks.base_model import ensure_base_model
    from recipes.tasks.cache import build_lock

    with build_lock():
        return str(ensure_base_model())


@pytest.fixture(scope="session")
def one_rank():
    from trainers import distributed

    return distributed.init("gloo")
