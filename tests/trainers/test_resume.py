"""Resuming from a checkpoint reproduces the uninterrupted run: same metrics, same HAPO history table."""
import json

import pytest

BASE = ["recipe=tiny_grpo", "trainer.prompts_per_step=4", "rollout.n=4", "trainer.micro_batch_size=8",
        "data.n_eval=16", "rollout.max_tokens=256", "rollout.kv_cache_memory_bytes=134217728",
        "reward.terms={correctness: 1.0, hapo: 1.0}", "trainer.eval_every=0", "logging.wandb=false",
        "logging.progress=false", "trainer.save_every=2"]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_resumed_hapo_run_equals_uninterrupted(base_model_dir, tmp_path, launch):
    full, part = tmp_path / "full", tmp_path / "part"
    launch(*BASE, "trainer.max_steps=4", f"run.output_dir={full}")
    launch(*BASE, "trainer.max_steps=2", f"run.output_dir={part}")
    # pretend the run died after step 3 was logged but before its checkpoint: the resumed run must drop it
    with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "stale": True}) + "\n")
    p = launch(*BASE, "trainer.max_steps=4", f"run.output_dir={part}", "run.resume=auto")
    assert "resumed from" in p.stdout and "step_2" in p.stdout
    a, b = _jsonl(full / "metrics.jsonl"), _jsonl(part / "metrics.jsonl")
    assert [m["step"] for m in b] == [1, 2, 3, 4] and not any(m.get("stale") for m in b)
    for x, y in zip(a, b):
        for key in ("reward/mean", "reward/hapo", "len/mean", "acc/mean", "train/loss", "train/grad_norm"):
            assert x[key] == y[key], (x["step"], key)
    ha = json.loads((full / "checkpoints" / "step_4" / "trainer_state.json").read_text())["samplers"][0]["rewards"]["hapo"]
    hb = json.loads((part / "checkpoints" / "step_4" / "trainer_state.json").read_text())["samplers"][0]["rewards"]["hapo"]
    assert ha == hb and len(ha["h"]) > 0  # the base model answers some problems correctly: history is non-empty
