"""Laconic reward terms as TRL reward_funcs: the adapter's numbers, and a real TRL GRPOTrainer step using it."""
import pytest

from rewards.config import RewardConfig
from rewards.trl_adapter import TRLReward

OK = "<think>\n1+1=2.\n</think>\nAnswer: 2"
BAD = "<think>\n1+1=3.\n</think>\nAnswer: 3"


@pytest.mark.unit
def test_adapter_groups_by_prompt_and_counts_tokens():
    fn = TRLReward("shorterbetter", RewardConfig(), max_completion_length=1000, eos_token_id=1)
    out = fn(prompts=["p", "p", "q", "q"], completions=[OK, OK, BAD, BAD],
             completion_ids=[[5] * 100 + [1], [5] * 299 + [1], [5] * 100, [5] * 300], answer=["2", "2", "2", "2"])
    # group p: SOL = 101 -> [2, 2 - .199]; group q all wrong: SOL = mean 200 -> [-.1, -.1]
    assert out == pytest.approx([2.0, 2 - 0.199, -0.1, -0.1])


@pytest.mark.unit
def test_adapter_marks_capped_completions_without_eos_truncated():
    cfg = RewardConfig(truncation="zero")
    fn = TRLReward("correctness", cfg, max_completion_length=10, eos_token_id=1)
    out = fn(prompts=["p", "p"], completions=[OK, OK], completion_ids=[[5] * 10, [5] * 9 + [1]], answer=["2", "2"])
    assert out == [0.0, 1.0]


@pytest.mark.unit
def test_stateful_adapter_updates_history_between_calls():
    fn = TRLReward("hapo", RewardConfig(), eos_token_id=1)
    kw = dict(prompts=["p", "p"], completions=[OK, OK], answer=["2", "2"], uid=["a", "a"])
    assert fn(completion_ids=[[5] * 99 + [1], [5] * 199 + [1]], **kw) == [0.0, 0.0]  # no history yet
    assert fn.states["hapo"].h == {"a": 100.0}
    assert fn(completion_ids=[[5] * 49 + [1], [5] * 99 + [1]], **kw) == pytest.approx([0.70710678, 0.0])


@pytest.mark.unit
def test_ceeh_through_the_adapter_keeps_its_state_between_calls():
    fn = TRLReward("ceeh", RewardConfig(), max_completion_length=1000, eos_token_id=1)
    kw = dict(prompts=["p", "p", "p"], completions=[OK, OK, BAD], answer=["2"] * 3, uid=["a"] * 3)
    assert fn(completion_ids=[[5] * 99 + [1], [5] * 199 + [1], [5] * 50], **kw) == [0.0, 0.0, 0.0]  # no L* yet
    assert fn.states["ceeh"].opt_len == {"a": 100.0}
    assert fn.states["ceeh"].acc == {"a": pytest.approx(2 / 3)}
    # accuracy 2/3 >= Acc_h 2/3: .1 * (100 - 50) / 100 = .05 and .1 * (100 - 300) / 100 = -.2; wrong -> 0
    got = fn(completion_ids=[[5] * 49 + [1], [5] * 299 + [1], [5] * 50], **kw)
    assert got == pytest.approx([0.05, -0.2, 0.0])
    assert fn.states["ceeh"].opt_len["a"] == pytest.approx(0.8 * 100 + 0.2 * 50)


@pytest.mark.unit
def test_adapter_passes_the_cap_for_difficulty_aware_truncation_and_refuses_transforms():
    cfg = RewardConfig(truncation="zero", difficulty_cap_threshold=0.5)  # easy groups: cap 0.5 * 100 = 50
    fn = TRLReward("correctness", cfg, max_completion_length=100, eos_token_id=1)
    out = fn(prompts=["p", "p"], completions=[OK, OK], completion_ids=[[5] * 40 + [1], [5] * 60 + [1]],
             answer=["2", "2"])
    assert out == [1.0, 0.0]
    with pytest.raises(ValueError, match="transforms"):
        TRLReward("correctness", RewardConfig(transforms=["dot"]))


@pytest.mark.slow
def test_runs_inside_trl_grpo_trainer(base_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from recipes.tasks import TASKS

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    rows, _ = TASKS["arith"].make_splits(0, 8, 2)
    ds = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"], "uid": r["uid"]} for r in rows])
    calls = []
    hapo = TRLReward("hapo", RewardConfig(), max_completion_length=64, eos_token_id=tok.eos_token_id)
    sb = TRLReward("shorterbetter", RewardConfig(), max_completion_length=64, eos_token_id=tok.eos_token_id)

    def spy(**kw):
        calls.append(len(kw["completions"]))
        return sb(**kw)

    spy.__name__ = "shorterbetter"
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_steps=2,
                      max_completion_length=64, learning_rate=1e-5, logging_steps=1, report_to="none", use_cpu=True,
                      save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(base_model_dir), reward_funcs=[spy, hapo],
                          args=args, train_dataset=ds, processing_class=tok)
    trainer.train()
    assert calls and all(c == 4 for c in calls)
    logged = [h for h in trainer.state.log_history if "rewards/shorterbetter/mean" in h]
    assert logged, trainer.state.log_history
    assert any("rewards/laconic_hapo/mean" in h for h in trainer.state.log_history)
