"""Checkpoints: ``checkpoints/step_N/`` = one DeepSpeed checkpoint per engine (``policy/``, ``critic/``) +
``trainer_state.json`` + ``hf/`` (the policy in HF format, what ``launch.py export step=N`` ships) + a ``COMPLETE``
marker.

A checkpoint is written into ``.step_N.tmp`` and renamed only once every rank has finished, so a run killed
mid-save leaves the previous complete checkpoint as the newest usable one.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from trainers.backend import distributed

_STEP_RE = re.compile(r"^step_(\d+)$")


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.exists():
        return []
    out = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and (p / "COMPLETE").exists()]
    return sorted(out)


def save(engines: dict, root: Path, step: int, trainer_state: dict, keep_last: int, is_main: bool,
         files: dict | None = None, writers: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Every rank writes its shards of every engine into ``.step_N.tmp``; rank 0 then adds the trainer state, the
    ``files`` (name -> object, ``torch.save``-d: e.g. the drafter), calls the ``writers`` (name -> function writing
    that file or folder, e.g. the HF export) and adds the ``COMPLETE`` marker and renames the folder into place (so a
    half-written checkpoint is never picked)."""
    final, tmp = root / f"step_{step}", root / f".step_{step}.tmp"
    if is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    distributed.barrier()
    for name, engine in engines.items():
        engine.save(str(tmp / name), client_state={"rng": rng_state(), "step": step})
    distributed.barrier()
    if is_main:
        for name, obj in (files or {}).items():
            torch.save(obj, tmp / name)
        for name, write in (writers or {}).items():
            write(tmp / name)
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        (tmp / "COMPLETE").write_text("")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for _, old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def discard_partial(root: Path, step: int) -> None:
    """Remove the half-written ``.step_N.tmp`` of a failed save (best effort: the disk may still be full)."""
    shutil.rmtree(root / f".step_{step}.tmp", ignore_errors=True)


def resolve(resume: str, root: Path) -> Path | None:
    """The checkpoint folder ``run.resume`` names: none -> None; auto -> newest complete one (None if there is
    none yet); otherwise a folder that must hold a complete checkpoint."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "COMPLETE").exists():
        raise FileNotFoundError(f"run.resume={resume!r} is not a complete checkpoint folder (no COMPLETE marker)")
    return path


def check_stop_at(stop_at: int, resume: str, output_dir: str) -> None:
    """``trainer.stop_at`` must lie after the step the run resumes from (a ValueError naming both, before any work)."""
    if not stop_at or resume == "none":
        return
    ckpt = resolve(resume, Path(output_dir) / "checkpoints") if (resume != "auto" or output_dir) else None
    m = _STEP_RE.match(ckpt.name) if ckpt is not None else None
    if m and int(m.group(1)) >= stop_at:
        raise ValueError(f"trainer.stop_at={stop_at}: the run resumes at step {m.group(1)} ({ckpt}), already past "
                         "it; set a later trainer.stop_at, or 0 to run to trainer.max_steps")


def check_resume(resume: str) -> None:
    """``run.resume`` naming a folder must name a complete checkpoint; checked before any work (a ValueError naming
    the field, with the newest complete checkpoint when the folder is a run folder or its ``checkpoints/``)."""
    if resume in ("none", "auto"):
        return
    path = Path(resume)
    if (path / "COMPLETE").exists():
        return
    if not path.is_dir():
        raise ValueError(f"run.resume={resume!r} is not a folder (use 'auto', 'none' or a checkpoint folder "
                         "RUN/checkpoints/step_N)")
    found = complete_checkpoints(path / "checkpoints") or complete_checkpoints(path)
    hint = (f"; did you mean run.resume={str(found[-1][1])!r} (its newest complete checkpoint), or run.resume=auto "
            f"with run.output_dir={str(path)!r}?" if found else "; it holds no complete checkpoint either")
    raise ValueError(f"run.resume={resume!r} is not a complete checkpoint folder (no COMPLETE marker){hint}")


def load(engines: dict, folder: Path) -> dict:
    """Restore every engine from ``folder`` and this process's RNG states; returns ``trainer_state.json``."""
    client = {}
    for name, engine in engines.items():
        if not (folder / name).is_dir():
            raise FileNotFoundError(f"checkpoint {folder} has no {name!r} engine state (it was saved by another "
                                    f"configuration?)")
        client = engine.load(str(folder / name))
    set_rng_state(client["rng"])
    return json.loads((folder / "trainer_state.json").read_text())
