"""The EAGLE-3 head on the real model (SmolLM2-135M-Instruct, 30 layers) in real vLLM engines: vLLM drafts exactly
what the torch head computes (same drafts, same acceptances, counted), the head trained online the way the loop
trains it is hot-swapped into the live engine, and speculation with it stays lossless (greedy and coupled sampling
give the plain engine's tokens)."""
import json

import pytest
import torch

from rollout.config import RolloutConfig
from rollout.types import Prompt, SamplingSpec

pytestmark = pytest.mark.slow
RC = dict(max_tokens=64, max_model_len=512, kv_cache_memory_bytes=1 << 28, spec_adaptive=False)
QUESTIONS = ["Calculate 4 + 3.", "Calculate 9 - 2 - 1.", "What is the capital of France?", "Name three colors.",
             "Explain why the sky is blue.", "Write a haiku about rain.", "Calculate 7 - 5 + 2.", "What is 12 times 3?"]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from drafters.config import DrafterConfig
    from drafters.online import OnlineDrafter
    from recipes.tasks.smollm2 import ensure_smollm2
    from rollout.vllm_engine import VLLMEngine
    from trainers.drafting import fit_on_rollouts

    path = str(ensure_smollm2())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [Prompt(str(i), tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                      tokenize=True, return_dict=False), {})
               for i, q in enumerate(QUESTIONS)]
    plain = VLLMEngine(path, RolloutConfig(**RC), seed=0)
    rollouts = plain.generate(prompts, SamplingSpec(n=2, max_tokens=64, temperature=0.7, seed=1))
    cfg = json.loads(open(f"{path}/config.json").read())
    drafter = OnlineDrafter(DrafterConfig(method="eagle3", train_vocab=2048, batch_rows=8), cfg,
                            model.get_input_embeddings().weight, model.get_output_embeddings().weight, 0.7,
                            final_norm=model.model.norm.weight)
    untrained = drafter.export(tmp_path_factory.mktemp("v0"))  # the placeholder vocabulary: (almost) never accepted
    stats = fit_on_rollouts(drafter, model, rollouts, steps=40, micro_batch=8, temperature=0.7)
    trained = drafter.export(tmp_path_factory.mktemp("trained"))
    return dict(path=path, model=model, prompts=prompts, plain=plain, drafter=drafter, untrained=untrained,
                trained=trained, stats=stats)


def _simulate(head, embed, seqs: list[list[int]], prompt_lens: list[int], aux: list[torch.Tensor]) -> tuple[int, int]:
    """vLLM's greedy K=1 speculation replayed with the torch head on the tokens it produced: after verifying up to
    token v, propose token v+1 from pair v-1 = (token v, features at v-1); accepted -> the bonus token too."""
    drafts = accepted = 0
    for x, p, a in zip(seqs, prompt_lens, aux):
        ids = torch.tensor(x)
        with torch.no_grad():
            guess = head.draft_ids[head.logits(head.forward(ids[None, 1:], a[None, :-1], None, embed)[0]).argmax(-1)]
        v = p
        while v < len(x) - 1:
            drafts += 1
            if int(guess[v - 1]) == x[v + 1]:
                accepted, v = accepted + 1, v + 2
            else:
                v += 1
    return drafts, accepted


def test_vllm_drafts_exactly_what_the_torch_head_computes(smol):
    from vllm import LLM, SamplingParams

    from trainers.backend.logprobs import completion_logprobs

    d, model = smol["drafter"], smol["model"]
    greedy = smol["plain"].generate(smol["prompts"], SamplingSpec(n=1, max_tokens=64, temperature=0.0, seed=0))
    llm = LLM(smol["path"], dtype="float32", enforce_eager=True, kv_cache_memory_bytes=1 << 28, max_model_len=512,
              enable_chunked_prefill=False, disable_log_stats=False,
              speculative_config={"method": "eagle3", "model": smol["trained"].path, "num_speculative_tokens": 1})
    out = llm.generate([{"prompt_token_ids": p.token_ids} for p in smol["prompts"]],
                       SamplingParams(temperature=0.0, max_tokens=64), use_tqdm=False)
    counts = {m.name: m.value for m in llm.get_metrics() if hasattr(m, "value")}
    del llm
    want = [[t for t, k in zip(c, m) if k] for c, m in zip(greedy.completion_ids.tolist(),
                                                          greedy.completion_mask.tolist())]
    assert [list(o.outputs[0].token_ids) for o in out] == want  # lossless: greedy output is the plain engine's
    seqs = [list(o.prompt_token_ids) + list(o.outputs[0].token_ids) for o in out]
    lens = [len(o.prompt_token_ids) for o in out]
    aux = []
    for o in out:
        comp = torch.tensor([list(o.outputs[0].token_ids)])
        _, _, f = completion_logprobs(model, [list(o.prompt_token_ids)], comp, torch.ones_like(comp, dtype=torch.bool),
                                      0, 1.0, aux_layers=d.feature_layers)
        aux.append(f.aux[0])
    drafts, accepted = _simulate(d.model, model.get_input_embeddings().weight.detach(), seqs, lens, aux)
    assert counts["vllm:spec_decode_num_drafts"] == drafts
    assert counts["vllm:spec_decode_num_accepted_tokens"] == accepted
    assert accepted > 0.1 * drafts  # a trained head (40 steps: 41 of 248 here), so the equality is not two zeros


def test_hot_swap_and_coupled_sampling_with_the_eagle3_head(smol):
    from rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(smol["path"], RolloutConfig(**RC), seed=0, drafter=smol["untrained"])
    spec = SamplingSpec(n=2, max_tokens=48, temperature=0.7, seed=5)

    def rate():
        b = engine.generate(smol["prompts"], spec)
        return b, b.spec.accepted_tokens / max(b.spec.draft_tokens, 1)

    _, before = rate()
    engine.load_drafter(smol["trained"])
    after_batch, after = rate()
    # per drafted token at K = 4 (a later token counts only after every earlier one was accepted): the briefly trained
    # head's ~0.15 per first position gives ~0.04, the placeholder vocabulary's ~0.005
    assert before < 0.015 and after > max(0.02, 3 * before), (before, after)
    plain = smol["plain"].generate(smol["prompts"], spec)
    assert after_batch.completion_ids.tolist() == plain.completion_ids.tolist()  # coupled: the plain engine's tokens
    m = plain.completion_mask
    assert (after_batch.sampler_logprobs[m] - plain.sampler_logprobs[m]).abs().max() < 1e-4
