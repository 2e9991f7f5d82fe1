"""End-to-end runs of ``launch.py`` on the embedded task: the run-folder contract, and two DeepSpeed ranks."""
import json
import shutil
import socket

import pytest

SMALL = ["recipe=tiny_grpo", "trainer.prompts_per_step=4", "rollout.n=4", "trainer.micro_batch_size=8",
         "data.n_eval=32", "eval.samples=1", "eval.max_tokens=128", "rollout.max_tokens=256",
         "rollout.kv_cache_memory_bytes=134217728"]
METRIC_KEYS = {"step", "time/step_s", "time/rollout_s", "time/update_s", "time/sync_s", "reward/mean", "acc/mean",
               "len/mean", "len/p90", "len/max", "len/truncated_frac", "rollout/tokens_per_s", "train/loss",
               "train/entropy", "train/grad_norm"}


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_single_rank_run_folder_contract(base_model_dir, tmp_path, launch):
    out = tmp_path / "run"
    p = launch(*SMALL, "trainer.max_steps=3", "trainer.save_every=1", "trainer.keep_last=2", "trainer.eval_every=2",
               f"run.output_dir={out}", "logging.wandb=true", "logging.wandb_mode=offline")
    assert f"run folder: {out}" in p.stdout
    assert "max_steps: 3" in (out / "config.yaml").read_text()
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert METRIC_KEYS <= set(metrics[0]), METRIC_KEYS - set(metrics[0])
    assert all(m["rollout/sequences"] == 16 for m in metrics)
    assert [m["policy_version"] for m in metrics] == [1, 2, 3]
    evals = _jsonl(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2, 3] and all(e["eval/n"] == 32 for e in evals)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["before"]["step"] == 0 and summary["after"]["step"] == 3
    assert {"eval/acc", "eval/len_mean", "eval/len_p90"} <= set(summary["after"])
    assert summary["totals"]["steps"] == 3 and summary["totals"]["rollout_tokens"] == sum(m["rollout/generated_tokens"] for m in metrics)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_2", "step_3"] and (out / "checkpoints" / "step_3" / "COMPLETE").exists()
    assert list((out / "wandb").glob("offline-run-*")), "W&B offline run folder missing"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out / "export")
    assert AutoTokenizer.from_pretrained(out / "export").eos_token is not None
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
def test_two_deepspeed_ranks_each_with_its_own_engine(base_model_dir, tmp_path, run_cmd, launch):
    """ZeRO-3 on two CPU ranks: every sync is checked (vLLM greedy == trainer argmax) and step 1 equals one rank."""
    out = tmp_path / "run2"
    port = _free_port()
    run_cmd(["deepspeed", "--num_gpus", "2", "--master_port", str(port), "launch.py", *SMALL, "trainer.max_steps=2",
             f"run.output_dir={out}", "logging.wandb=false", "logging.progress=false", "deepspeed.zero_stage=3",
             "trainer.sync_check_every=1"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["ranks"] == 2 and summary["totals"]["steps"] == 2
    metrics = _jsonl(out / "metrics.jsonl")
    assert len(metrics) == 2 and all(m["rollout/sequences"] == 16 for m in metrics)  # both ranks' rows gathered
    assert _jsonl(out / "eval.jsonl")[0]["eval/n"] == 32  # held-out set split over ranks, gathered once
    assert (out / "checkpoints" / "step_2" / "COMPLETE").exists()
    assert all(m["sync/greedy_match"] == 1.0 for m in metrics)  # ZeRO-3: gathered in buckets, engine == trainer
    # trainer.balance_ranks: the groups dealt out again, never worse than where they were sampled
    assert all(1.0 <= m["rollout/rank_token_imbalance"] <= m["rollout/rank_token_imbalance_before"] for m in metrics)

    # the same global batch on one rank: rollouts are seeded per (step, problem, sample) and vLLM sampling is
    # batch-invariant, so step 1 sees identical completions; DeepSpeed's reduced gradient must then give the
    # one-rank loss and gradient norm (aggregation uses global token counts, engine rescales by world size)
    one = tmp_path / "run1"
    launch(*SMALL, "trainer.max_steps=1", f"run.output_dir={one}", "logging.wandb=false", "logging.progress=false",
           "deepspeed.zero_stage=3")
    m1, m2 = _jsonl(one / "metrics.jsonl")[0], metrics[0]
    for key in ("reward/mean", "len/mean", "len/max", "acc/mean"):
        assert m1[key] == m2[key], key
    for key in ("train/loss", "train/grad_norm", "train/entropy"):
        assert m1[key] == pytest.approx(m2[key], rel=1e-4, abs=1e-6), key


def _free_port() -> int:
    with socket.socket() as sock:  # the default 29500 may be held by an in-process group of an earlier test
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
def test_lora_on_two_ranks_syncs_merged_weights(base_model_dir, tmp_path, run_cmd):
    """LoRA through peft on two ranks: the engine receives merged weights that decode exactly like the trainer's
    adapter model at every step, the checkpoint holds only the adapter, and the export is a plain merged model."""
    out = tmp_path / "lora"
    run_cmd(["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), "launch.py", *SMALL,
             "trainer.max_steps=2", f"run.output_dir={out}", "logging.wandb=false", "logging.progress=false",
             "model.lora.rank=8", "optim.lr=3e-3", "trainer.sync_check_every=1", "deepspeed.zero_stage=2"])
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["sync/greedy_match"] for m in metrics] == [1.0, 1.0]
    assert metrics[1]["train/grad_norm"] > 0
    import torch
    from safetensors.torch import load_file

    export = load_file(out / "export" / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in export)
    base = load_file(f"{base_model_dir}/model.safetensors")
    assert set(export) == set(base)
    assert not torch.equal(export["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])  # the adapter was merged in
    ckpt = out / "checkpoints" / "step_2" / "policy" / "deepspeed"
    model_state = torch.load(next(ckpt.glob("*model_states.pt")), weights_only=False)["module"]
    assert model_state and all("lora_" in k for k in model_state)  # adapter only, no frozen base weights


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="deepspeed launcher not installed")
def test_drafter_on_two_ranks_trains_in_idle_windows_and_averages(base_model_dir, tmp_path, run_cmd):
    """The drafter's multi-rank mode with dynamic sampling (ranks may run different numbers of sampling rounds; the
    idle window's all-reduce must still pair up): each rank trains in its idle window, the ranks' drafters are
    averaged into one (both ranks export the same weights), and speculation runs with it."""
    out = tmp_path / "draft2"
    run_cmd(["deepspeed", "--num_gpus", "2", "--master_port", str(_free_port()), "launch.py", "recipe=tiny_dler",
             "trainer.prompts_per_step=8", "rollout.n=4", "trainer.micro_batch_size=8", "trainer.max_steps=3",
             "data.n_eval=16", "eval.samples=1", "eval.max_tokens=128", "rollout.kv_cache_memory_bytes=134217728",
             "drafter.init=", "drafter.warmup_steps=20", "drafter.warmup_prompts=8", "drafter.final_steps=2",
             "drafter.report_calls=0", f"run.output_dir={out}", "logging.wandb=false", "logging.progress=false"])
    import torch
    from safetensors.torch import load_file

    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3] and all("rollout/sample_rounds" in m for m in metrics)
    assert all(m["time/idle_s"] >= 0 for m in metrics) and sum(m["spec/drafts"] for m in metrics) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"]["ranks"] == 2 and summary["drafter"]["version"] >= 1
    ranks = [load_file(out / "drafter" / f"rank{r}" / "current" / "model.safetensors") for r in (0, 1)]
    assert set(ranks[0]) == set(ranks[1])
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # averaged (each warmed on its own prompts)
    v0 = load_file(out / "drafter" / "rank0" / "v0" / "model.safetensors")
    assert any(not torch.equal(v0[k], ranks[0][k]) for k in v0)  # and trained


@pytest.mark.slow
def test_lookup_drafts_change_no_learning_and_train_nothing(base_model_dir, tmp_path, launch):
    """``drafter.method=lookup``: the run speculates from step 1 (no warm start, no drafter training, nothing exported
    beside the model) and, with coupled sampling, learns exactly what the run without a drafter learns."""
    runs = {}
    for arm, extra in (("plain", ["drafter.enabled=false"]), ("lookup", ["drafter.enabled=true",
                                                                          "drafter.method=lookup"])):
        out = tmp_path / arm
        launch(*SMALL, "trainer.max_steps=2", "data.n_eval=16", "drafter.report_calls=2", f"run.output_dir={out}",
               "logging.wandb=false", *extra)
        runs[arm] = (_jsonl(out / "metrics.jsonl"), json.loads((out / "summary.json").read_text()), out)
    (plain, _, _), (lookup, summary, out) = runs["plain"], runs["lookup"]
    for key in ("reward/mean", "len/mean", "train/loss", "train/grad_norm"):
        assert [m[key] for m in lookup] == [m[key] for m in plain], key
    assert all(m["spec/accepted_tokens"] > 0 for m in lookup)
    assert summary["drafter"]["method"] == "lookup" and summary["drafter"]["mean_accept_len"] > 1.0
    assert set(summary["drafter"]["measured_speedup"]) == {"1", "4"}
    assert not (out / "export" / "drafter").exists() and not (out / "drafter").exists()
