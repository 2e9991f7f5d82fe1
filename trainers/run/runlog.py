"""The run folder contract (ARCHITECTURE.md §7): config.yaml, metrics.jsonl, eval.jsonl, summary.json.

Appends are flushed and fsynced line by line so a killed run keeps every finished step; whole-file writes go
through a temporary file and ``os.replace`` so a reader never sees half a file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(v):
    """JSON has no inf/nan: write them as null (e.g. tokens per correct answer when none is correct)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


def preflight(path: str | Path, min_free_mb: int, resume: str = "auto") -> Path:
    """Create the run folder and check it takes writes and its disk has ``min_free_mb`` free; -> the folder.
    With ``resume="none"`` the folder must not already hold a run (its metrics and checkpoints would be mixed with
    and overwritten by the new run's). Raises OSError naming ``run.output_dir`` (cheap: meant to run before any
    model is built or loaded)."""
    import shutil

    path = Path(path)
    if resume == "none":
        held = [p.name for p in (path / "metrics.jsonl", path / "eval.jsonl") if p.is_file()]
        held += [f"checkpoints/{c.name}" for c in sorted((path / "checkpoints").glob("step_*"))][-1:]
        if held:
            raise OSError(f"run.output_dir={str(path)!r} already holds a run ({', '.join(held)}): continue it with "
                          "run.resume=auto, or choose a new run.output_dir (nothing there was touched)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"run.output_dir={str(path)!r} cannot be created: {e}") from None
    probe = path / f".write_probe.{os.getpid()}"
    try:
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise OSError(f"run.output_dir={str(path)!r} is not writable: {e}") from None
    free_mb = shutil.disk_usage(path).free / 2**20
    if free_mb < min_free_mb:
        raise OSError(f"run.output_dir={str(path)!r}: only {free_mb:.0f} MiB free on its disk, run.min_free_mb="
                      f"{min_free_mb} needed (checkpoints, metrics, export)")
    return path


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        probe = self.path / f".write_probe.{os.getpid()}"  # one per process: ranks probe the same folder at once
        try:
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise OSError(f"run.output_dir={str(self.path)!r} is not writable: {e}") from e
        self.checkpoints = self.path / "checkpoints"

    def write_config(self, yaml_text: str) -> None:
        atomic_write_text(self.path / "config.yaml", yaml_text)

    def append(self, name: str, record: dict) -> None:
        line = json.dumps(_clean(record))
        with open(self.path / name, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_metrics(self, record: dict) -> None:
        self.append("metrics.jsonl", record)

    def log_eval(self, record: dict) -> None:
        self.append("eval.jsonl", record)

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps(_clean(summary), indent=2) + "\n")

    def write_reward_history(self, history: dict) -> None:
        """``reward_history.json``: the stateful reward terms' per-problem history at the end of the run, the layout
        ``reward.history_file`` seeds a new run with."""
        atomic_write_text(self.path / "reward_history.json", json.dumps(history, indent=1, sort_keys=True))

    def read_jsonl(self, name: str) -> list[dict]:
        p = self.path / name
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (logged by a run killed before its next checkpoint)."""
        for name in ("metrics.jsonl", "eval.jsonl"):
            rows = self.read_jsonl(name)
            if rows:
                kept = "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step)
                atomic_write_text(self.path / name, kept)
