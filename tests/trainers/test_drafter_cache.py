"""The warm-started drafter cached once per base model, data and drafter settings (``drafter.init=cache``)."""
import json
from dataclasses import replace

import pytest

from recipes.loader import load
from trainers.drafting import drafter_cache_dir, save_to_cache


@pytest.mark.unit
def test_cache_key_follows_what_the_warm_start_depends_on(tmp_path, monkeypatch):
    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path / "cache"))
    policy = tmp_path / "base"
    policy.mkdir()
    (policy / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (policy / "model.safetensors").write_bytes(b"x" * 10)
    cfg, _ = load("tiny_dler", [])
    key = drafter_cache_dir(cfg, str(policy), 1)
    assert key.parent == tmp_path / "cache" / "drafters" and key.name.startswith("base-")
    assert drafter_cache_dir(replace(cfg, trainer=replace(cfg.trainer, max_steps=99)), str(policy), 1) == key
    assert drafter_cache_dir(replace(cfg, algo=replace(cfg.algo, clip_high=0.4)), str(policy), 1) == key
    for other in (replace(cfg, drafter=replace(cfg.drafter, warmup_steps=7)),
                  replace(cfg, rollout=replace(cfg.rollout, max_tokens=64)),
                  replace(cfg, data=replace(cfg.data, seed=3))):
        assert drafter_cache_dir(other, str(policy), 1) != key
    assert drafter_cache_dir(cfg, str(policy), 2) != key
    (policy / "model.safetensors").write_bytes(b"y" * 11)  # a rebuilt base model is another model
    assert drafter_cache_dir(cfg, str(policy), 1) != key


@pytest.mark.unit
def test_cache_is_published_whole(tmp_path):
    from drafters.types import DrafterStats

    src = tmp_path / "export"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"w")
    cache = tmp_path / "drafters" / "base-abc"
    cache.parent.mkdir()
    save_to_cache(str(src), cache, DrafterStats(loss=1.0, top1_agreement=0.5, train_s=2.0, steps=3, tokens=4))
    assert sorted(p.name for p in cache.iterdir()) == ["COMPLETE", "config.json", "model.safetensors",
                                                       "warm_start.json"]
    assert json.loads((cache / "warm_start.json").read_text())["steps"] == 3
    assert not list(cache.parent.glob("*.tmp*"))


@pytest.mark.slow
def test_a_second_run_starts_from_the_cached_drafter(base_model_dir, tmp_path, run_cmd):
    """The first run with drafter.init=cache warm-starts and publishes its drafter; the next run with the same base,
    data and drafter settings builds its engine with exactly those weights and skips the warm start."""
    import sys

    import torch
    from safetensors.torch import load_file

    cache = tmp_path / "cache"
    argv = [sys.executable, "launch.py", "recipe=tiny_dler", f"model.path={base_model_dir}", "drafter.init=cache",
            "trainer.max_steps=1", "trainer.prompts_per_step=4", "rollout.n=4", "trainer.micro_batch_size=8",
            "data.n_eval=8", "eval.samples=1", "eval.max_tokens=64", "rollout.kv_cache_memory_bytes=134217728",
            "drafter.warmup_steps=20", "drafter.warmup_prompts=8", "drafter.final_steps=0", "drafter.report_calls=0",
            "logging.wandb=false", "logging.progress=false"]
    # neither the trigger nor the final fit's rule is in the key; the second run's final fit stops after two rounds
    # of 10 steps (no round of training raises top-1 agreement by 0.5), not at its 40 steps
    second_more = ["drafter.train_when=drift", "drafter.final_steps=40", "drafter.final_min_gain=0.5",
                   "drafter.final_round_steps=10"]
    for name, more in (("first", []), ("second", second_more)):
        run_cmd(argv + more + [f"run.output_dir={tmp_path / name}"], LACONIC_CACHE=str(cache))
    (entry,) = list((cache / "drafters").iterdir())
    assert (entry / "COMPLETE").is_file() and json.loads((entry / "warm_start.json").read_text())["steps"] == 20
    first, second = (json.loads((tmp_path / n / "summary.json").read_text())["drafter"] for n in ("first", "second"))
    assert first["drafter/warmup_steps"] == 20 and first["drafter/warmup_s"] > 0
    assert second["drafter/warmup_steps"] == 0 and second["drafter/warmup_s"] == 0.0
    assert second["drafter/final_steps"] == 20 and len(second["drafter/final_rounds_top1"]) == 2
    assert "drafter/final_rounds_top1" not in first
    cached = load_file(entry / "model.safetensors")
    v0 = load_file(tmp_path / "second" / "drafter" / "rank0" / "v0" / "model.safetensors")
    assert set(v0) == set(cached) and all(torch.equal(v0[k], cached[k]) for k in cached)
    (m,) = [json.loads(line) for line in (tmp_path / "second" / "metrics.jsonl").read_text().splitlines()]
    assert m["drafter/trained"] == 0.0 and m["drafter/steps"] == 0 and m["spec/drafts"] > 0  # measured, not trained
