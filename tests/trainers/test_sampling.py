"""Phases 1-3 on a real engine: with dynamic sampling a rank runs as many rounds as it needs in phase 1, and phase 3
rolls nothing out, so the drafter's idle window between them (a collective with several ranks) runs once per step,
after the rank's last round, and ranks that ran different numbers of rounds still post it the same number of
times."""
from dataclasses import replace

import pytest
import torch.distributed as dist
from transformers import AutoTokenizer

from recipes.loader import load
from recipes.tasks import arith
from rollout.vllm_engine import VLLMEngine
from trainers.data import to_prompts
from trainers.metrics import Timers
from trainers.sampling import Sampler

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(base_model_dir):
    cfg, _ = load("tiny_dler", [f"model.path={base_model_dir}", "drafter.enabled=false"])
    eng = VLLMEngine(base_model_dir, replace(cfg.rollout, kv_cache_memory_bytes=64 * 2**20), seed=0)
    yield eng
    # shut the engine down here, not at exit: its shutdown destroys the default process group, which the next
    # module's DeepSpeed engines would be using by then
    eng.close()
    assert not dist.is_initialized()


@pytest.mark.parametrize("dynamic", [True, False])
def test_idle_window_opens_once_after_the_ranks_last_round(base_model_dir, engine, dynamic):
    # a 4-token cap truncates every completion, so every group scores 0 (truncation: zero) and has no spread:
    # dynamic sampling drops them all and runs every round it may
    cfg, _ = load("tiny_dler", [f"model.path={base_model_dir}", "rollout.max_tokens=4", "rollout.n=2",
                                "trainer.prompts_per_step=4", "trainer.max_sample_rounds=3",
                                f"trainer.dynamic_sampling={str(dynamic).lower()}"])
    train, _ = arith.make_splits(0, 32, 4)
    sampler = Sampler(cfg, engine, AutoTokenizer.from_pretrained(base_model_dir),
                      to_prompts(train, engine.tokenizer, cfg.data), rank=0, world_size=1)
    sample_calls, rounds_at_idle = [], []
    stock = sampler.rollout
    sampler.rollout = lambda *a, **k: sample_calls.append(1) or stock(*a, **k)
    timers = Timers()
    rounds = sampler.roll_out(1, timers)  # the phases of Trainer.train_step: 1 roll out, 2 idle window, 3 select
    with timers("idle"):
        rounds_at_idle.append(len(sample_calls))
    sample = sampler.select(rounds)  # selecting rolls nothing out: the idle window came after the last round
    assert bool(sample.batch.truncated.all()) and float(sample.rewards.total.abs().sum()) == 0.0
    assert len(sample_calls) == (3 if dynamic else 1)
    assert rounds_at_idle == [len(sample_calls)]  # once, after the last round
    assert "idle" in timers.seconds and (sample.stats.get("rollout/sample_rounds") == 3 if dynamic else True)


def test_the_batch_clock_splits_the_rollouts_time_by_requests_in_the_engine(base_model_dir, engine):
    """Every generate call of a plain engine (no drafter) reports its engine-step seconds by how many requests the
    engine held: all of them at the first step, fewer as completions end, never more; together they are the call's
    time less what happens outside the engine's steps. The step's metrics turn them into the long tail's share."""
    import time

    from trainers.metrics import batch_time_metrics

    cfg, _ = load("tiny_dler", [f"model.path={base_model_dir}", "rollout.max_tokens=200", "rollout.n=4",
                                "trainer.prompts_per_step=4", "trainer.dynamic_sampling=false"])
    train, _ = arith.make_splits(0, 32, 4)
    sampler = Sampler(cfg, engine, AutoTokenizer.from_pretrained(base_model_dir),
                      to_prompts(train, engine.tokenizer, cfg.data), rank=0, world_size=1)
    t0 = time.perf_counter()
    rounds = sampler.roll_out(1, Timers())
    wall = time.perf_counter() - t0
    sample = sampler.select(rounds)
    assert len(sample.timing) == 1
    seconds = sample.timing[0].seconds
    lengths = sample.batch.num_tokens.tolist()
    assert max(seconds) == 16 and min(seconds) >= 1
    # the engine holds as many requests as have not finished: a size only occurs where a completion is that long
    assert set(seconds) <= {sum(n > t for n in lengths) for t in range(max(lengths))}
    assert 0.5 * wall < sample.timing[0].total() < wall
    m = batch_time_metrics(sample.timing)
    assert m["rollout/engine_s"] == pytest.approx(sample.timing[0].total())
    assert 0.0 <= m["rollout/batch_le8_frac"] <= m["rollout/batch_le32_frac"] == pytest.approx(1.0)
    assert m["rollout/batch_le8_frac"] == pytest.approx(sample.timing[0].at_most(8) / sample.timing[0].total())
