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
    """The run's rows, with LCPO length targets written into the prompts when ``data.length_target`` asks."""
    if cfg.train_file or cfg.eval_file:
        if not (cfg.train_file and cfg.eval_file):
            raise ValueError("data.train_file and data.eval_file must be set together")
        if cfg.eval_task:
            raise ValueError("data.eval_task and data.eval_file name two held-out sets; set one")
        train, held_out, name = read_rows(cfg.train_file), read_rows(cfg.eval_file), Path(cfg.eval_file).stem
    else:
        train, held_out = task_splits(cfg.task, cfg)
        name = cfg.task
    if cfg.eval_task:
        if cfg.eval_file:
            raise ValueError("data.eval_task and data.eval_file name two held-out sets; set one")
        held_out, name = eval_task_rows(cfg.eval_task, cfg), cfg.eval_task
    if cfg.train_rows < 0:
        raise ValueError(f"data.train_rows={cfg.train_rows} must be >= 0 (0 = every training row)")
    if cfg.train_rows:
        if cfg.train_rows > len(train):
            raise ValueError(f"data.train_rows={cfg.train_rows} is more than the {len(train)} training rows")
        train = train[:cfg.train_rows]
    lt = cfg.length_target
    if lt.mode != "none":
        train = with_length_targets(train, lt, cfg.seed, [None] * len(train))
        held_out = with_length_targets(held_out, lt, cfg.seed, [lt.eval_targets[i % len(lt.eval_targets)]
                                                                for i in range(len(held_out))])
    return TaskData(train=train, eval=held_out, name=name)


def task_splits(task: str, cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows of an embedded task or of ``rg:NAME`` (reasoning-gym, ``data.rg_config``)."""
    from recipes.tasks import TASKS
    from recipes.tasks import rg

    if task.startswith(rg.PREFIX):
        return rg.make_splits(task[len(rg.PREFIX):], cfg.seed, cfg.n_train, cfg.n_eval, dict(cfg.rg_config))
    if cfg.rg_config:
        raise ValueError(f"data.rg_config is set but data.task={task!r} is not a reasoning-gym task (rg:NAME)")
    if task not in TASKS:
        raise ValueError(f"data.task={task!r} is not one of {sorted(TASKS)} nor rg:NAME (a reasoning-gym task)")
    return TASKS[task].make_splits(cfg.seed, cfg.n_train, cfg.n_eval)


def eval_task_rows(name: str, cfg: DataConfig) -> list[dict]:
    """``data.eval_task``: ``gsm8k`` (the GSM8K test problems) or a task's held-out split."""
    from recipes.tasks import rg

    if name == rg.GSM8K:
        return rg.gsm8k_rows()
    return task_splits(name, cfg)[1]


def heldout_rows(cfg: DataConfig, data: str = "") -> tuple[list[dict], str]:
    """The held-out rows ``launch.py eval data=...`` names, and the data set's name: ``""`` = ``cfg``'s own held-out
    set, a task name = that embedded task's (``cfg``'s seed and ``n_eval``), a path = the file's rows. Length targets
    are written into the prompts as in training when ``cfg.length_target`` asks."""
    from dataclasses import replace

    if not data:
        task = load_task(cfg)
        return task.eval, task.name
    if Path(data).suffix in (".jsonl", ".json", ".parquet") or Path(data).exists():
        rows, lt = read_rows(data), cfg.length_target
        if lt.mode != "none":
            rows = with_length_targets(rows, lt, cfg.seed, [lt.eval_targets[i % len(lt.eval_targets)]
                                                            for i in range(len(rows))])
        return rows, Path(data).stem
    from recipes.tasks import TASKS
    from recipes.tasks import rg

    if data == rg.GSM8K:
        return rg.gsm8k_rows(), data
    if data not in TASKS and not data.startswith(rg.PREFIX):
        raise ValueError(f"data={data!r} is neither a data file, gsm8k, rg:NAME nor an embedded task (tasks: "
                         f"{sorted(TASKS)})")
    task = load_task(replace(cfg, task=data, train_file="", eval_file="", eval_task="",
                             rg_config=cfg.rg_config if data == cfg.task else {}))
    return task.eval, task.name


TARGET_TEXT = {"exact": "Think for {n} tokens.", "max": "Think for maximum {n} tokens."}  # L1's prompt suffixes


def with_length_line(prompt: str, mode: str, n: int) -> str:
    """``prompt`` with L1's length instruction for N = ``n`` as its last line (the one place that writes it)."""
    return f"{prompt.rstrip(chr(10))}\n{TARGET_TEXT[mode].format(n=n)}\n"


def with_length_targets(rows: list[dict], lt, seed: int, fixed: list[int | None]) -> list[dict]:
    """L1 / LCPO (Aggarwal & Welleck 2025): append the length instruction to each prompt and keep N in the row
    (``target_tokens``, read by the lcpo terms). A row's N is ``fixed[i]`` or drawn uniformly from
    ``[min_tokens, max_tokens]`` by an RNG seeded by (seed, uid), so it does not depend on row order; a share
    ``none_frac`` of the drawn rows carries no target. ``target_mode`` says which instruction the row states:
    ``lt.mode``, or with ``both`` (cmu-l3/l1 @c3b546e6 ``scripts/data/deepscaler_dataset.py --use_both_both``)
    Exact or Max with probability 1/2 each. New rows; the input is not modified."""
    import random

    out = []
    for i, (row, n) in enumerate(zip(rows, fixed)):
        rng = random.Random(f"lcpo-{seed}-{row['uid']}")
        drawn = n is None
        if drawn:
            if rng.random() < lt.none_frac:
                out.append(dict(row))
                continue
            n = rng.randint(lt.min_tokens, lt.max_tokens)
        mode = lt.mode
        if mode == "both":  # L1-Max's data: each problem Exact or Max at random (held-out rows alternate)
            mode = ("max" if rng.random() < 0.5 else "exact") if drawn else ("exact", "max")[i % 2]
        out.append(dict(row, prompt=with_length_line(row["prompt"], mode, n), target_tokens=n, target_mode=mode))
    return out
