"""The drafter in its own process (drafter.background): it trains between the trainer's calls without being asked,
its state and export are the worker's, and a failure in the worker surfaces in the trainer with the worker's
traceback instead of a hang."""
import time

import pytest
import torch

from drafters.background import BackgroundDrafter
from drafters.config import DrafterConfig
from drafters.eagle import EagleHead
from drafters.online import OnlineDrafter
from drafters.types import DrafterBatch

from tests.drafters.test_eagle import CFG, _fixed_batch


@pytest.fixture
def toy():
    batch, emb, head = _fixed_batch()
    cfg = DrafterConfig(enabled=True, lr=3e-3, batch_rows=16, max_steps_per_update=40, background=True)
    d = BackgroundDrafter(cfg, CFG, emb, head, temperature=1.0, seed=0)
    yield d, batch, emb, head, cfg
    d.close()


def _wait_for_steps(d: BackgroundDrafter, want: int, timeout_s: float = 120.0):
    """Collect until the worker has taken ``want`` background steps in all."""
    got, t0, stats = 0, time.perf_counter(), []
    while got < want:
        assert time.perf_counter() - t0 < timeout_s, f"worker took only {got} steps in {timeout_s} s"
        time.sleep(0.2)
        st = d.collect()
        got += st.steps
        stats.append(st)
    return got, stats


def test_worker_trains_in_the_background_and_its_export_is_what_it_learned(toy, tmp_path):
    d, batch, emb, head, cfg = toy
    local = OnlineDrafter(cfg, CFG, emb, head, temperature=1.0, seed=0)
    before = local.evaluate(batch)
    d.new_step()
    d.add(batch)
    assert d.collect().steps == 0  # nothing happens until run(): the warm start trains in the foreground
    d.run(True)
    steps, stats = _wait_for_steps(d, 60)
    assert all(s.steps <= cfg.max_steps_per_update for s in stats)  # the per-RL-step cap holds between collects
    exp = d.export(tmp_path / "current")
    assert exp.version >= 1 and d.version == exp.version
    local.model = EagleHead.load(exp.path)
    after = local.evaluate(batch)
    assert after.loss < 0.7 * before.loss, (before, after)
    # the checkpointed state is the worker's: loaded into a fresh local drafter it has the exported weights
    d.run(False)
    state = d.state_dict()
    fresh = OnlineDrafter(cfg, CFG, emb, head, temperature=1.0, seed=1)
    fresh.load_state_dict(state)
    again = EagleHead.load(d.export(tmp_path / "again").path)
    for (k, a), (_, b) in zip(fresh.model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert state["total_steps"] >= steps


def test_foreground_training_and_state_round_trip(toy):
    d, batch, emb, head, cfg = toy
    d.new_step()
    d.add(batch)
    st = d.train(budget_s=1e9, max_steps=25)
    assert st.steps == 25 and d.version == 1
    state = d.state_dict()
    d.train(budget_s=1e9, max_steps=5)
    d.load_state_dict(state)  # back to the state after 25 steps
    assert d.version == 1 and d.state_dict()["total_steps"] == 25
    with pytest.raises(ValueError, match="one rank"):
        d.average_with(None, 1.0)


def test_worker_failure_surfaces_with_its_traceback(toy):
    d, batch, emb, head, cfg = toy
    d.new_step()
    wrong = DrafterBatch(batch.token_ids, torch.zeros(*batch.token_ids.shape, 32), batch.valid, batch.target)
    d.add(wrong)  # hidden size 32 for a 64-wide head: fails in the worker's first step
    d.run(True)
    with pytest.raises(RuntimeError, match="background drafter process failed"):
        _wait_for_steps(d, 1, timeout_s=60)
