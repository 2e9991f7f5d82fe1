"""The drafter's training targets come from the trainer's own forward and line up with it: the hidden state at
every target position q predicts exactly the completion token at q+1 the trainer scored (no off-by-one); the step's
``spec/*`` metrics pool its generate calls with vLLM's definitions."""
import pytest
import torch

pytestmark = pytest.mark.unit


def test_drafter_targets_are_the_states_that_score_completion_tokens_1_to_n_minus_1():
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainers.backend.logprobs import completion_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    prompts = [[5, 6, 7], [8, 9]]
    comp = torch.tensor([[11, 12, 13, 14], [15, 16, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        lp, _, feats = completion_logprobs(model, prompts, comp, mask, pad_id=0, temperature=1.0)
    batch = feats.to_drafter_batch()
    logp = torch.log_softmax(model.lm_head(batch.hidden_states), -1)  # [B,L,V]
    for b, p in enumerate(prompts):
        qs = batch.target[b].nonzero().flatten().tolist()
        n = int(mask[b].sum())
        assert qs == list(range(len(p), len(p) + n - 1))  # completion tokens 1 .. n-1
        for q in qs:
            t = q + 1 - len(p)  # the completion token h_q predicts
            assert batch.token_ids[b, q + 1] == comp[b, t]
            torch.testing.assert_close(logp[b, q, comp[b, t]], lp[b, t])
    assert torch.equal(batch.valid.sum(-1), torch.tensor([7, 4]))


def test_eagle3_features_are_the_residual_stream_the_engine_captures():
    """``aux_layers`` (2, 4, 5) of an 8-layer policy: the input of layers 2, 4 and 5 (what vLLM's Llama captures as
    ``hidden_states + residual`` after layers 2, 4, 5), recomputed here by running the decoder layers by hand."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainers.backend.logprobs import completion_logprobs

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=8,
                                         num_attention_heads=2, num_key_value_heads=2)).eval()
    prompts, comp = [[5, 6, 7]], torch.tensor([[11, 12, 13]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        _, _, plain = completion_logprobs(model, prompts, comp, mask, pad_id=0, temperature=1.0)
        _, _, feats = completion_logprobs(model, prompts, comp, mask, pad_id=0, temperature=1.0,
                                          aux_layers=(2, 4, 5))
        assert plain.aux is None and feats.aux.shape == (1, 6, 96)
        ids = torch.tensor([[5, 6, 7, 11, 12, 13]])
        x, pos = model.model.embed_tokens(ids), torch.arange(6)[None]
        rope = model.model.rotary_emb(x, pos)
        causal = torch.full((6, 6), float("-inf")).triu(1)[None, None]
        states = [x]
        for layer in model.model.layers:
            out = layer(states[-1], attention_mask=causal, position_ids=pos, position_embeddings=rope)
            states.append(out[0] if isinstance(out, tuple) else out)
    torch.testing.assert_close(feats.aux, torch.cat([states[2], states[4], states[5]], -1), atol=1e-5, rtol=1e-5)
    batch = feats.to_drafter_batch()
    assert batch.aux_hidden is feats.aux and torch.equal(batch.hidden_states, plain.hidden)


def test_spec_metrics_pool_a_steps_generate_calls_with_vllms_definitions():
    from rollout.types import SpecStats
    from trainers.metrics import spec_metrics

    calls = [SpecStats(enabled_frac=1.0, drafts=10, draft_tokens=40, accepted_tokens=30, handoffs=2, lookup_drafts=8),
             SpecStats(enabled_frac=0.5, drafts=30, draft_tokens=60, accepted_tokens=20)]
    m = spec_metrics(calls)
    assert m["spec/mean_accept_len"] == pytest.approx(1 + 50 / 40)  # bonus token counted, pooled over rounds
    assert m["spec/acceptance_rate"] == pytest.approx(50 / 100)
    assert (m["spec/drafts"], m["spec/draft_tokens"], m["spec/accepted_tokens"], m["spec/handoffs"]) == (40, 100, 50, 2)
    assert m["spec/enabled_frac"] == pytest.approx(0.75) and m["spec/lookup_frac"] == pytest.approx(8 / 40)
    off = spec_metrics([SpecStats()])
    assert off["spec/mean_accept_len"] == 0.0 and off["spec/acceptance_rate"] == 0.0
