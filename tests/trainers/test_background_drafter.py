"""``drafter.background=true`` in the RL loop: a real run whose drafter trains in its own process. Its updates reach
the checkpoints, the swap and the export; a resumed run continues the worker's state; no worker outlives the run."""
import json
from pathlib import Path

import pytest
import torch

RUN = ["recipe=tiny_dler", "trainer.prompts_per_step=2", "rollout.n=4", "trainer.micro_batch_size=8",
       "data.n_eval=8", "eval.samples=1", "eval.max_tokens=128", "rollout.kv_cache_memory_bytes=134217728",
       "trainer.save_every=1", "trainer.eval_every=0", "drafter.background=true", "drafter.init=",
       "drafter.train_when=always", "drafter.warmup_prompts=2", "drafter.warmup_steps=12", "drafter.final_steps=7",
       "drafter.final_prompts=2", "logging.wandb=false", "logging.progress=false"]


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _drafter_state(run: Path, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"step_{step}" / "drafter.pt", weights_only=False)


@pytest.mark.slow
def test_background_drafter_trains_checkpoints_resumes_and_exits(launch, tmp_path):
    import time

    out = tmp_path / "run"
    t0 = time.time()
    p = launch(*RUN, "trainer.max_steps=2", f"run.output_dir={out}")
    assert "held-out accuracy" in p.stdout and "drafter (eagle): mean acceptance" in p.stdout  # the end-of-run report
    first = _metrics(out)
    assert [m["step"] for m in first] == [1, 2]
    # the checkpoint holds the worker's state: warm start + every step's background steps + the final fit
    s2 = _drafter_state(out, 2)
    summary = json.loads((out / "summary.json").read_text())["drafter"]
    # the end-of-run speedup is measured (with vs without speculation in the run's engine), not only estimated
    assert "rollout speedup measured at the end" in p.stdout
    measured = summary["measured_speedup"]
    assert sorted(measured) == ["1", "4"] and all(v > 0 for v in measured.values())
    final = summary["drafter/final_steps"]
    assert final >= 7
    assert s2["total_steps"] == 12 + sum(m["drafter/steps"] for m in first) + final
    assert s2["version"] == summary["version"] > first[-1]["drafter/version"] >= 1  # exported = checkpointed
    assert all(m["drafter/overhead_s"] > 0 for m in first)

    # coupled speculative sampling: the drafter (trained in the background, swapped in whenever it is ready, used at
    # whatever K the controller picks) changes no sampled token, so the run learns exactly what it learns without it
    off = tmp_path / "off"
    launch(*RUN, "drafter.enabled=false", "trainer.max_steps=2", f"run.output_dir={off}")
    for a, b in zip(first, _metrics(off), strict=True):
        assert a["spec/accepted_tokens"] > 0 or a["step"] == 1
        for key in ("reward/mean", "len/mean", "acc/mean", "train/loss", "train/grad_norm"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])

    launch(*RUN, "trainer.max_steps=3", "run.resume=auto", f"run.output_dir={out}")  # resumes from step 2
    resumed = _metrics(out)
    assert [m["step"] for m in resumed] == [1, 2, 3]
    s3 = _drafter_state(out, 3)
    summary = json.loads((out / "summary.json").read_text())["drafter"]
    assert s3["total_steps"] == s2["total_steps"] + resumed[-1]["drafter/steps"] + summary["drafter/final_steps"]
    # the resumed worker starts from the checkpoint (its replay window does not travel: step 3 may train 0 steps)
    assert s3["version"] == summary["version"] > resumed[-1]["drafter/version"] >= s2["version"]
    export = out / "export" / "drafter"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["laconic_drafter"] == "eagle" and (export / "model.safetensors").is_file()
    assert not _workers_since(t0)  # no drafter worker outlives its run


def _workers_since(t0: float) -> list[int]:
    """multiprocessing spawn children started since t0 that are still alive (a worker left behind by a run)."""
    import psutil

    left = []
    for p in psutil.process_iter(["cmdline", "create_time"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "spawn_main" in cmd and (p.info["create_time"] or 0) >= t0 - 1:
            left.append(p.pid)
    return left
