"""A run under bad input or a hostile environment: each failure is named clearly, early, and loses nothing already
written (ARCHITECTURE.md §7 run folder). The fast ones fail before any model loads; the slow ones run the real
trainer: a raising / hanging reward, NaN losses, a disk that fills up mid-save, SIGKILL mid-training and mid-save."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT, shell_env

TINY = ["recipe=tiny_grpo", "trainer.prompts_per_step=4", "rollout.n=4", "trainer.micro_batch_size=8",
        "data.n_eval=16", "rollout.max_tokens=256", "rollout.kv_cache_memory_bytes=134217728", "trainer.eval_every=0",
        "logging.wandb=false", "logging.progress=false",
        "eval.samples=1", "eval.max_tokens=128"]  # before/after evaluations only need to run, not to be precise


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- fast: fail before anything heavy
def test_output_dir_that_cannot_be_created(tmp_path, launch):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    p = launch(*TINY, f"run.output_dir={blocker}/run", check=False, timeout=60)
    assert p.returncode != 0 and "laconic: output error: run.output_dir=" in p.stderr and "cannot be created" in p.stderr
    assert blocker.read_text() == "keep me"


def test_fresh_run_into_a_folder_holding_a_run_is_refused(tmp_path, launch):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_3").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _digest(run)
    p = launch(*TINY, f"run.output_dir={run}", check=False, timeout=60)
    assert p.returncode != 0 and "already holds a run (metrics.jsonl, checkpoints/step_3)" in p.stderr
    assert "run.resume=auto" in p.stderr and _digest(run) == before


def test_disk_without_room_fails_before_the_model_loads(tmp_path, launch):
    p = launch(*TINY, f"run.output_dir={tmp_path / 'run'}", "run.min_free_mb=1000000000", check=False, timeout=60)
    assert p.returncode != 0 and "MiB free on its disk, run.min_free_mb=1000000000 needed" in p.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_missing_model_path_and_bad_data_rows_name_the_culprit(tmp_path, launch):
    p = launch(*TINY, f"run.output_dir={tmp_path / 'r1'}", f"model.path={tmp_path / 'nope'}", check=False, timeout=60)
    assert p.returncode != 0 and "laconic: model error: model.path=" in p.stderr and "is not a folder" in p.stderr
    (tmp_path / "empty").mkdir()
    p = launch(*TINY, f"run.output_dir={tmp_path / 'r2'}", f"model.path={tmp_path / 'empty'}", check=False, timeout=60)
    assert "has no config.json" in p.stderr
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text('{"prompt": "1+1", "answer": 2}\n{"prompt": "2+2"}\n')
    held.write_text('{"prompt": "1+1", "answer": 2}\nnot json\n')
    p = launch(*TINY, f"run.output_dir={tmp_path / 'r3'}", f"data.train_file={train}", f"data.eval_file={held}",
               check=False, timeout=60)
    assert p.returncode != 0 and f"laconic: data error: {train}: row 2 has no ['answer'] field(s)" in p.stderr
    train.write_text('{"prompt": "1+1", "answer": 2}\n')
    p = launch(*TINY, f"run.output_dir={tmp_path / 'r3'}", f"data.train_file={train}", f"data.eval_file={held}",
               check=False, timeout=60)
    assert p.returncode != 0 and f"laconic: data error: {held}: row 2 is not valid JSON" in p.stderr


# ---------------------------------------------------------------- slow: the real trainer
USER = """
import os, time
import torch
from rewards.verifiers import exact_integer

def flaky(completion, answer):          # a verifier that raises on some problems and hangs on others
    if int(answer) % 5 == 0:
        raise RuntimeError("judge unreachable")
    if int(answer) % 5 == 1:
        time.sleep(120)
    return exact_integer(completion, answer)

def nan_when_asked(inp, cfg):            # a reward term that turns NaN when the test says so
    value = float("nan") if os.environ.get("LACONIC_TEST_NAN") else 0.0
    return torch.full((len(inp.completions),), value)
"""


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "user_reward.py"
    path.write_text(textwrap.dedent(USER))
    return path


@pytest.mark.slow
def test_raising_or_hanging_reward_scores_zero_counts_and_the_run_goes_on(base_model_dir, tmp_path, launch, user_file):
    out = tmp_path / "run"
    p = launch(*TINY, "trainer.max_steps=2", f"run.output_dir={out}", f"reward.correctness.verifier={user_file}:flaky",
               "reward.timeout_s=0.3", "eval.max_tokens=64")
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert sum(m["reward/errors"] for m in metrics) > 0  # both kinds happen on the embedded task's answers
    assert "raised RuntimeError: judge unreachable" in p.stderr and "timed out after 0.3 s" in p.stderr
    assert json.loads((out / "summary.json").read_text())["totals"]["steps"] == 2


@pytest.mark.slow
def test_nan_losses_are_skipped_then_stop_the_run_with_the_good_checkpoint_intact(base_model_dir, tmp_path, run_cmd,
                                                                                  user_file):
    out = tmp_path / "run"
    args = [sys.executable, "launch.py", *TINY, f"run.output_dir={out}", "trainer.save_every=1", "trainer.keep_last=1",
            f"reward.terms={{correctness: 1.0, '{user_file}:nan_when_asked': 1.0}}", "trainer.max_nonfinite_steps=2"]
    run_cmd(args + ["trainer.max_steps=1"])
    good = out / "checkpoints" / "step_1"
    before = _digest(good)
    p = run_cmd(args + ["trainer.max_steps=5", "run.resume=auto"], check=False, LACONIC_TEST_NAN="1")
    assert p.returncode != 0
    assert "run stopped at step 3: the loss, a reward or an advantage was NaN/inf in 2 steps in a row (steps 2-3" in p.stderr
    assert f"the newest good checkpoint is {good}" in p.stderr
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["train/nonfinite"] for m in metrics] == [0, 1, 1] and metrics[1]["reward/mean"] is None
    assert _digest(good) == before  # skipped steps write no checkpoint, keep_last=1 deleted nothing
    assert sorted(q.name for q in (out / "checkpoints").iterdir()) == ["step_1"]


@pytest.fixture
def small_disk(tmp_path):
    """-> mount(size_mb): a real tmpfs of that size under tmp_path (a full disk for real), unmounted afterwards."""
    mounted = []

    def mount(size_mb: int):
        where = tmp_path / "small"
        where.mkdir()
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], capture_output=True,
                           text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs CAP_SYS_ADMIN): {p.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_the_previous_checkpoint_and_metrics(base_model_dir, tmp_path, run_cmd,
                                                                          small_disk):
    first = tmp_path / "run"
    args = [sys.executable, "launch.py", *TINY, "trainer.save_every=1", "run.min_free_mb=1"]
    run_cmd(args + ["trainer.max_steps=1", f"run.output_dir={first}"])
    used_mb = sum(p.stat().st_size for p in first.rglob("*") if p.is_file()) / 2**20
    disk = small_disk(int(used_mb) + 3)  # room for the run so far, not for another ~6.6 MB checkpoint
    out = disk / "run"
    shutil.copytree(first, out)
    good, metrics_before = _digest(out / "checkpoints" / "step_1"), (out / "metrics.jsonl").read_text()
    p = run_cmd(args + ["trainer.max_steps=3", "run.resume=auto", f"run.output_dir={out}"], check=False)
    assert p.returncode != 0, p.stdout[-2000:]
    assert "run stopped at step 2: could not write checkpoint step_2" in p.stderr, p.stderr[-3000:]
    assert f"the newest complete checkpoint is {out / 'checkpoints' / 'step_1'}" in p.stderr
    assert _digest(out / "checkpoints" / "step_1") == good
    assert not (out / "checkpoints" / ".step_2.tmp").exists() and not (out / "checkpoints" / "step_2").exists()
    rows = _jsonl(out / "metrics.jsonl")
    assert (out / "metrics.jsonl").read_text().startswith(metrics_before) and [m["step"] for m in rows] == [1, 2]


def _kill_when(proc, ready, timeout=600):
    start = time.monotonic()
    while not ready():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() - start < timeout
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


RESUME = TINY + ["reward.terms={correctness: 1.0, hapo: 1.0}", "trainer.max_steps=4", "trainer.save_every=2"]


@pytest.fixture(scope="module")
def uninterrupted(base_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    subprocess.run([sys.executable, "launch.py", *RESUME, f"run.output_dir={out}"], cwd=ROOT, env=shell_env(),
                   check=True, capture_output=True, timeout=900)
    return out


def _killed_then_resumed(tmp_path, ready_of):
    out = tmp_path / "run"
    argv = [sys.executable, "launch.py", *RESUME, f"run.output_dir={out}"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=shell_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _kill_when(proc, ready_of(out))
    p = subprocess.run(argv + ["run.resume=auto"], cwd=ROOT, env=shell_env(), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


def _same_run(a, b):
    ma, mb = _jsonl(a / "metrics.jsonl"), _jsonl(b / "metrics.jsonl")
    assert [m["step"] for m in mb] == [1, 2, 3, 4]
    for x, y in zip(ma, mb):
        for key in ("reward/mean", "reward/hapo", "len/mean", "acc/mean", "train/loss", "train/grad_norm"):
            assert x[key] == y[key], (x["step"], key)
    ha, hb = (json.loads((r / "checkpoints" / "step_4" / "trainer_state.json").read_text())["samplers"][0]["rewards"]
              ["hapo"] for r in (a, b))
    assert ha == hb and len(ha["h"]) > 0  # HAPO's per-problem history survived the kill
    sa, sb = (json.loads((r / "summary.json").read_text())["after"] for r in (a, b))
    assert sa["eval/acc"] == sb["eval/acc"] and sa["eval/len_mean"] == sb["eval/len_mean"]


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    def step3_logged(out):  # step 2's checkpoint is written before step 3 starts
        return lambda: (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3
    out, p = _killed_then_resumed(tmp_path, step3_logged)
    assert "resumed from" in p.stdout and "step_2" in p.stdout
    _same_run(uninterrupted, out)


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_save_resumes_from_the_previous_one(uninterrupted, tmp_path):
    def saving_step4(out):
        return lambda: (out / "checkpoints" / ".step_4.tmp").exists()
    out, p = _killed_then_resumed(tmp_path, saving_step4)
    assert "resumed from" in p.stdout and "step_2" in p.stdout
    _same_run(uninterrupted, out)


@pytest.mark.slow
def test_stop_at_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    """``trainer.stop_at``: the run stops after that step with its checkpoint and none of the run's end (no summary,
    no export), and resuming it gives the run that never stopped."""
    out = tmp_path / "run"
    argv = [sys.executable, "launch.py", *RESUME, f"run.output_dir={out}"]
    p = subprocess.run(argv + ["trainer.stop_at=3"], cwd=ROOT, env=shell_env(), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "stopped after step 3 (trainer.stop_at)" in p.stdout and "held-out accuracy" not in p.stdout
    assert [m["step"] for m in _jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert not (out / "summary.json").exists() and not (out / "export").exists()
    assert (out / "checkpoints" / "step_3" / "COMPLETE").exists()
    again = subprocess.run(argv + ["trainer.stop_at=3", "run.resume=auto"], cwd=ROOT, env=shell_env(),
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 1 and "config error: trainer.stop_at=3: the run resumes at step 3" in again.stderr
    p = subprocess.run(argv + ["run.resume=auto"], cwd=ROOT, env=shell_env(), capture_output=True, text=True,
                       timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "step_3" in p.stdout
    _same_run(uninterrupted, out)
