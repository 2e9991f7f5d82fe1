"""Weight sync into the live vLLM engine: after a DeepSpeed optimizer step and ``load_policy``, vLLM's greedy
completion equals HF greedy ``generate`` of the trainer's current weights, and differs from the pre-step one."""
import pytest
import torch

from rollout.config import RolloutConfig
from rollout.types import Prompt, SamplingSpec


@pytest.fixture(scope="module")
def setup(base_model_dir, one_rank):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recipes.loader import load
    from rollout.vllm_engine import VLLMEngine
    from trainers.backend.engine import TrainEngine, policy_optim

    cfg, _ = load("tiny_grpo", ["optim.lr=3e-3", "optim.grad_clip=0", "trainer.micro_batch_size=1"])
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    policy = TrainEngine(model, policy_optim(cfg), cfg, world_size=1, grad_accum=1)
    engine = VLLMEngine(base_model_dir, RolloutConfig(max_tokens=64, max_model_len=512,
                                                      kv_cache_memory_bytes=64 * 2**20), seed=0)
    return tok, policy, engine


def _hf_greedy(model, ids, n):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_greedy_matches_hf_before_and_after_step(setup):
    from recipes.tasks import TASKS

    tok, policy, engine = setup
    rows, _ = TASKS["arith"].make_splits(3, 4, 2)
    ids = tok(rows[0]["prompt"], add_special_tokens=False)["input_ids"]
    spec = SamplingSpec(n=1, max_tokens=40, temperature=0.0)
    # vLLM stops at EOS; compare the prefix HF produced up to the same length
    before = engine.generate([Prompt("p0", ids)], spec).completion_ids[0].tolist()
    assert before == _hf_greedy(policy.module, ids, 40)[:len(before)]

    _sft_step(tok, policy, ids, "<think>\n" + "9" * 30)
    # the engine still holds the old weights: the teacher-forced sync check must catch it
    stale = _agreement(policy.module, ids, before)
    assert not stale.all()
    engine.load_policy(policy.iter_hf_weights(), version=1)

    after = engine.generate([Prompt("p0", ids)], spec).completion_ids[0].tolist()
    assert after == _hf_greedy(policy.module, ids, 40)[:len(after)]
    assert after != before
    assert engine.policy_version == 1
    assert _agreement(policy.module, ids, after).all()


def _sft_step(tok, policy, ids, text):
    """One optimizer step of SFT toward ``text`` after the prompt ``ids`` (a different continuation)."""
    seq = torch.tensor([ids + tok(text, add_special_tokens=False)["input_ids"]])
    labels = seq.clone()
    labels[0, :len(ids)] = -100
    policy.backward(policy.module(input_ids=seq, labels=labels).loss)
    policy.step()


def _trainer_logprob_gap(policy, ids, batch, temperature):
    """Largest |trainer log-prob - sampler log-prob| over a batch of completions of the prompt ``ids``."""
    from trainers.backend.logprobs import completion_logprobs

    with torch.no_grad():
        lp, _, _ = completion_logprobs(policy.module, [ids] * len(batch.texts), batch.completion_ids,
                                       batch.completion_mask, 0, temperature, 64)
    m = batch.completion_mask
    return (lp[m] - batch.sampler_logprobs[m]).abs().max()


def _agreement(model, ids, completion):
    from trainers.backend.logprobs import greedy_agreement

    comp = torch.tensor([completion])
    ok, _ = greedy_agreement(model, [ids], comp, torch.ones_like(comp, dtype=torch.bool), 0)
    return ok


def test_sampler_logprobs_match_trainer(setup):
    """Sampled log-probs from vLLM (processed, at the sampling temperature) agree with the trainer's kernel."""
    tok, policy, engine = setup
    ids = tok("Start with 5. Add 3, then multiply by 2.\n", add_special_tokens=False)["input_ids"]
    batch = engine.generate([Prompt("p1", ids)], SamplingSpec(n=4, max_tokens=48, temperature=0.7, seed=11))
    assert _trainer_logprob_gap(policy, ids, batch, 0.7) < 1e-3
    assert len(set(batch.texts)) > 1  # distinct seeds per sample
    # the engine does not detokenize token by token; its texts are what vLLM's own detokenizer writes
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from rollout.vllm_engine import request_seed

    params = [SamplingParams(temperature=0.7, max_tokens=48, seed=request_seed(11, "p1", j)) for j in range(4)]
    outs = engine.llm.generate([TokensPrompt(prompt_token_ids=ids)] * 4, sampling_params=params, use_tqdm=False)
    assert [o.outputs[0].text for o in outs] == batch.texts


@pytest.fixture(scope="module")
def compiled(base_model_dir, setup):
    """A second engine with vLLM's torch.compile on (``rollout.enforce_eager=false``), kept for the module."""
    from rollout.vllm_engine import VLLMEngine

    return VLLMEngine(base_model_dir, RolloutConfig(max_tokens=64, max_model_len=512, enforce_eager=False,
                                                    kv_cache_memory_bytes=64 * 2**20), seed=0)


@pytest.mark.slow
def test_compiled_engine_takes_pushed_weights(setup, compiled):
    """``rollout.enforce_eager=false``: the compiled graphs read the live parameters, so a weight push reaches them
    (greedy = HF greedy of the trainer's weights afterwards, changed from before) and sampled log-probs stay the
    trainer's."""
    tok, policy, _ = setup
    ids = tok("Start with 4. Add 6, then multiply by 3.\n", add_special_tokens=False)["input_ids"]
    greedy = SamplingSpec(n=1, max_tokens=40, temperature=0.0)
    compiled.load_policy(policy.iter_hf_weights(), version=1)
    before = compiled.generate([Prompt("c0", ids)], greedy).completion_ids[0].tolist()
    assert before == _hf_greedy(policy.module, ids, 40)[:len(before)]

    _sft_step(tok, policy, ids, "<think>\n" + "7" * 30)
    compiled.load_policy(policy.iter_hf_weights(), version=2)
    after = compiled.generate([Prompt("c0", ids)], greedy).completion_ids[0].tolist()
    assert after != before
    assert after == _hf_greedy(policy.module, ids, 40)[:len(after)]

    batch = compiled.generate([Prompt("c1", ids)], SamplingSpec(n=4, max_tokens=48, temperature=0.7, seed=5))
    assert _trainer_logprob_gap(policy, ids, batch, 0.7) < 1e-3
