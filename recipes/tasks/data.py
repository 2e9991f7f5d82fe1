"""Data sets for a run: the embedded task built from a seed, or rows read from local JSONL / parquet files.

Every row must have ``prompt`` and ``answer``; ``uid`` defaults to ``<file stem>-<row index>``. A missing field or
an unreadable row is reported with the file and row number before any model is loaded.
"""
from __future__ import annotations

import json
from pathlib import Path

from trainers.config import DataConfig
from trainers.types import TaskData

REQUIRED = ("prompt", "answer")


def read_rows(path: str) -> list[dict]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file {path!r} does not exist")
    if p.suffix == ".parquet":
        import datasets  # heavy import kept at the edge

        rows = list(datasets.load_dataset("parquet", data_files=str(p), split="train"))
    else:
        rows = []
        for i, line in enumerate(p.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: row {i + 1} is not valid JSON ({e.msg})") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {i + 1} is not a JSON object")
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ValueError(f"{path}: row {i + 1} has no {missing} field(s); fields present: {sorted(row)}")
        row.setdefault("uid", f"{p.stem}-{i}")
        row["answer"] = str(row["answer"])
    if not rows:
        raise ValueError(f"data file {path!r} has no rows")
    return rows


def load_task(cfg: DataConfig) -> TaskData:
    if cfg.train_file or cfg.eval_file:
        if not (cfg.train_file and cfg.eval_file):
            raise ValueError("data.train_file and data.eval_file must be set together")
        return TaskData(train=read_rows(cfg.train_file), eval=read_rows(cfg.eval_file),
                        name=Path(cfg.eval_file).stem)
    from recipes.tasks import TASKS

    if cfg.task not in TASKS:
        raise ValueError(f"data.task={cfg.task!r} is not one of {sorted(TASKS)}")
    train, held_out = TASKS[cfg.task].make_splits(cfg.seed, cfg.n_train, cfg.n_eval)
    return TaskData(train=train, eval=held_out, name=cfg.task)
