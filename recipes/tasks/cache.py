"""Where built artefacts live, and a lock so concurrent ranks or runs build the base model only once."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    return Path(os.environ.get("LACONIC_CACHE", Path.home() / ".cache" / "laconic"))


@contextlib.contextmanager
def build_lock(name: str = "base_model") -> Iterator[None]:
    """Exclusive inter-process lock on ``<cache>/.NAME.lock``; the second waiter then finds the cache filled."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
