"""The weights the rollout engine and the export receive: LoRA merged on the fly like peft's own merge (without
touching the trainer's copy), and ZeRO-3 partitions gathered bucket by bucket into exactly the full state dict."""
import copy

import pytest
import torch

from trainers.config import LoraConfig
from trainers.backend.weights import buckets, sync_units, unit_tensors


def _tiny_llama(seed=0, tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie))


def _all(module):
    return {k: v for u in sync_units(module) for k, v in unit_tensors(u)}


@pytest.mark.unit
@pytest.mark.parametrize("tie", [False, True])
def test_plain_model_units_reproduce_state_dict(tie):
    model = _tiny_llama(tie=tie)
    got, want = _all(model), model.state_dict()
    assert set(got) == set(want)  # tied lm_head.weight included, as vLLM needs it
    for k in want:
        torch.testing.assert_close(got[k], want[k])


@pytest.mark.unit
def test_lora_units_equal_peft_merge_and_leave_trainer_copy_unmerged():
    from trainers.backend.models import with_lora

    model = with_lora(_tiny_llama(), LoraConfig(rank=4, alpha=8.0, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # peft starts with B = 0 (no change); make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = _all(model)
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(got) == set(want) and not any("lora" in k or "base_layer" in k for k in got)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(got[q], before[f"base_model.model.{q[:-len('weight')]}base_layer.weight"])
    for n, p in model.named_parameters():  # the trainer's weights are untouched
        assert torch.equal(p, before[n]), n


@pytest.mark.unit
def test_lora_with_no_matching_target_names_the_modules():
    from trainers.backend.models import with_lora

    with pytest.raises(ValueError, match="match no module.*q_proj"):
        with_lora(_tiny_llama(), LoraConfig(rank=4, target_modules=["query", "value"]))


@pytest.mark.unit
def test_buckets_respect_size_and_keep_order():
    units = sync_units(_tiny_llama())
    groups = list(buckets(units, bucket_bytes=8192))
    assert [u.name for g in groups for u in g] == [u.name for u in units]
    assert len(groups) > 3
    assert all(sum(u.nbytes() for u in g) <= 8192 or len(g) == 1 for g in groups)


def test_zero3_engine_gathers_buckets_into_the_full_state_dict(one_rank):
    from recipes.loader import load
    from trainers.backend.engine import TrainEngine, policy_optim

    cfg, _ = load("tiny_grpo", ["deepspeed.zero_stage=3", "trainer.micro_batch_size=1"])
    model = _tiny_llama(seed=3)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    engine = TrainEngine(model, policy_optim(cfg), cfg, world_size=1, grad_accum=1)
    assert all(p.numel() == 0 for p in engine.module.parameters())  # really partitioned
    engine.bucket_bytes = 16384  # many buckets
    got = dict(engine.iter_hf_weights())
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k])
    assert all(p.numel() == 0 for p in engine.module.parameters())  # released again


@pytest.mark.parametrize("stage", [2, 3])
def test_gradient_accumulation_over_micro_batches_equals_one_batch(one_rank, stage):
    """The trainer runs the decoder and the head itself (not ``engine(...)``); with ``begin_micro`` ZeRO must still
    accumulate: 2 micro-batches of 2 give the same gradient norm and update as 1 batch of 4 (ZeRO-3 used to keep
    only the last micro-batch's gradient)."""
    from recipes.loader import load
    from trainers.backend.engine import TrainEngine, policy_optim
    from trainers.backend.logprobs import completion_logprobs

    torch.manual_seed(0)
    prompts = [torch.randint(1, 40, (int(n),)).tolist() for n in (3, 5, 4, 6)]
    comp = torch.randint(1, 40, (4, 5))
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = mask[2, 4:] = False
    results = []
    for micro, accum in ((4, 1), (2, 2)):
        cfg, _ = load("tiny_grpo", [f"deepspeed.zero_stage={stage}", f"trainer.micro_batch_size={micro}",
                                    "optim.grad_clip=100.0"])
        engine = TrainEngine(_tiny_llama(seed=5), policy_optim(cfg), cfg, world_size=1, grad_accum=accum)
        for s in range(0, 4, micro):
            engine.begin_micro()
            lp, _, _ = completion_logprobs(engine.module, prompts[s:s + micro], comp[s:s + micro], mask[s:s + micro],
                                           0, 1.0, through_head_module=stage == 3)
            engine.backward(-(lp * mask[s:s + micro]).sum() / mask.sum())
            engine.step()
        results.append((engine.grad_norm(), {k: v.clone() for k, v in engine.iter_hf_weights()}))
    (n1, w1), (n2, w2) = results
    assert n2 == pytest.approx(n1, rel=1e-4)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)


def test_updater_length_sorted_micro_batches_equal_one_batch(one_rank):
    """The updater cuts micro-batches from a by-length order of rows (less padding): its update must equal one
    written by hand over the rows in their own order (on-policy PPO-clip at ratio 1 = -A * logp, token-mean), so
    every row meets its own advantage."""
    from recipes.loader import load
    from trainers.backend.engine import TrainEngine, policy_optim
    from trainers.backend.logprobs import completion_logprobs
    from trainers.update import Forward, Rows, Updater

    torch.manual_seed(1)
    lens = torch.tensor([6, 1, 4, 2, 5, 3])
    prompts = [torch.randint(1, 40, (int(n),)).tolist() for n in (3, 5, 4, 6, 2, 3)]
    comp = torch.randint(1, 40, (6, 6))
    mask = torch.arange(6)[None, :] < lens[:, None]
    adv = torch.randn(6)[:, None].expand(6, 6) * mask
    weights = []
    for micro in (6, 2):
        cfg, _ = load("tiny_grpo", [f"trainer.micro_batch_size={micro}", "trainer.prompts_per_step=6", "rollout.n=1",
                                    "optim.grad_clip=100.0"])
        engine = TrainEngine(_tiny_llama(seed=5), policy_optim(cfg), cfg, world_size=1, grad_accum=6 // micro)
        if micro == 6:  # by hand, rows in their own order
            engine.begin_micro()
            lp, _, _ = completion_logprobs(engine.module, prompts, comp, mask, 0, 1.0)
            engine.backward(-(adv * lp * mask).sum() / mask.sum())
            engine.step()
        else:
            sums = Updater(cfg, engine, pad_id=0).update(Rows(prompts, comp, mask, None), adv, None,
                                                          Forward(None, None, None, None)).sums
            assert sums["tokens"] == float(mask.sum()) and sums["nonfinite"] == 0
        weights.append({k: v.clone() for k, v in engine.iter_hf_weights()})
    start = _tiny_llama(seed=5).state_dict()
    assert max(float((weights[0][k] - start[k]).abs().max()) for k in start) > 1e-5  # the update did something
    for k in weights[0]:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=1e-4, atol=1e-6)
