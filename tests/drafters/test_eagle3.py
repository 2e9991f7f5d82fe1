"""The EAGLE-3 head in plain torch: the layers it reads, its proposal steps as vLLM runs them, its start as the
policy's early exit, the draft vocabulary chosen from the rollouts, and the checkpoint layout vLLM and SGLang load.
(That vLLM drafts exactly what this head computes is tests/drafters/test_eagle3_vllm.py, on the real model.)"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from drafters.config import DrafterConfig
from drafters.eagle import llama_sizes
from drafters.eagle3 import Eagle3Head, aux_layers
from drafters.online import OnlineDrafter, read_weights
from drafters.types import DrafterBatch

pytestmark = pytest.mark.unit

CFG = {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "intermediate_size": 128,
       "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": 40, "max_position_embeddings": 128,
       "model_type": "llama", "hidden_act": "silu", "num_hidden_layers": 8}
H, V = 64, 40


def _head(draft_ids=None, seed=0):
    torch.manual_seed(seed)
    head = Eagle3Head(llama_sizes(CFG), 8, draft_ids)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return head


def _batch(seed=0, b=6, l=14):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, l), generator=g)
    hid, aux = torch.randn(b, l, H, generator=g), torch.randn(b, l, 3 * H, generator=g)
    target = torch.zeros(b, l, dtype=torch.bool)
    target[:, 4:l - 1] = True
    return DrafterBatch(ids, hid, torch.ones(b, l, dtype=torch.bool), target, aux)


def test_reads_the_engines_default_layers_and_refuses_shallow_policies():
    assert aux_layers(30) == (2, 15, 27) and aux_layers(28) == (2, 14, 25) and aux_layers(8) == (2, 4, 5)
    with pytest.raises(ValueError, match="6-layer policy.*drafter.method=eagle"):
        aux_layers(6)
    with pytest.raises(ValueError, match="6-layer"):
        OnlineDrafter(DrafterConfig(method="eagle3"), CFG | {"num_hidden_layers": 6}, torch.randn(V, H),
                      torch.randn(V, H), 1.0)


def _propose_like_vllm(head, ids, aux, emb, last: int, steps: int) -> list[torch.Tensor]:
    """vLLM's EAGLE-3 round after verifying up to ``last``, written out: teacher-forced KV for positions 0..last from
    (token_{p+1}, fc(aux_p)), then each step at position last+j-1 reads the previous step's pre-norm output (no fc)."""
    layer = head.midlayer
    g = head.fc(aux[:last + 1])
    y = torch.cat([layer.input_layernorm(emb[ids[1:last + 2]]), layer.hidden_norm(g)], -1)[None]
    _, k, v = layer.qkv(y, torch.arange(last + 1)[None])
    keys, values = [k], [v]
    f = head.forward(ids[None, 1:last + 2], aux[None, :last + 1], None, emb)[0, last]
    outs = [f]
    for j in range(2, steps + 1):
        p = last + j - 1
        yq = torch.cat([layer.input_layernorm(emb[ids[p + 1]]), layer.hidden_norm(f)], -1)[None, None]
        q, k, v = layer.qkv(yq, torch.tensor([[p]]))
        keys.append(k)
        values.append(v)
        att = torch.softmax(q @ torch.cat(keys, 2).transpose(-1, -2) / math.sqrt(layer.hd), -1) @ torch.cat(values, 2)
        f = layer.finish(f[None, None], att)[0, 0]
        outs.append(f)
    return outs


def test_unrolled_training_steps_are_vllms_proposal_steps():
    head = _head()
    l = 12
    ids, aux, emb = torch.randint(0, V, (l,)), torch.randn(l, 3 * H), torch.randn(V, H)
    starts = torch.tensor([[0, 3, 6, 7]])
    f1, deeper = head.chain_outputs(ids[None, 1:], aux[None, :-1], emb, 4, starts)
    for m, last in enumerate(starts[0].tolist()):
        want = _propose_like_vllm(head, ids, aux, emb, last, 4)
        torch.testing.assert_close(f1[0, last], want[0], atol=1e-4, rtol=1e-4)
        for i in range(2, 5):
            torch.testing.assert_close(deeper[i - 2][0, m], want[i - 1], atol=1e-4, rtol=1e-4)


def test_starts_as_the_policys_early_exit_at_its_last_captured_layer():
    """fc passes the third captured state, the layer adds nothing, norm and LM head are the policy's: the first
    drafts are the policy's logit lens (its final norm and head on the residual stream after layer L-3)."""
    head = _head(torch.tensor([1, 5, 9, 20, 33]))
    lm_head, norm_w = torch.randn(V, H), torch.rand(H) + 0.5
    head.start_from_policy(lm_head, norm_w)
    b = _batch()
    f = head.forward(b.token_ids[:, 1:], b.aux_hidden[:, :-1], None, torch.randn(V, H))
    last = b.aux_hidden[:, :-1, 2 * H:]
    lens = (last * torch.rsqrt(last.pow(2).mean(-1, keepdim=True) + 1e-6) * norm_w) @ lm_head[[1, 5, 9, 20, 33]].t()
    torch.testing.assert_close(head.logits(f), lens, atol=1e-4, rtol=1e-4)


def _skewed(seed=0):
    b = _batch(seed)
    ids = b.token_ids % 12  # only tokens 0..11 occur, 3 and 7 most
    ids[:, ::3] = 3
    ids[:, 1::5] = 7
    return DrafterBatch(ids, b.hidden_states, b.valid, b.target, b.aux_hidden)


def test_draft_vocabulary_is_the_rollouts_most_used_tokens_and_training_teaches_it():
    emb, lm_head = torch.randn(V, H), torch.randn(V, H)
    d = OnlineDrafter(DrafterConfig(method="eagle3", train_vocab=8, lr=3e-3, batch_rows=6), CFG, emb, lm_head, 1.0)
    assert d.feature_layers == (2, 4, 5) and not d.vocab_fixed
    batch = _skewed()
    d.add(batch)
    before = d.evaluate(batch)
    d.train(budget_s=1e9, max_steps=150)
    want = torch.topk(torch.bincount(batch.token_ids.flatten(), minlength=V), 8).indices.sort().values
    assert d.vocab_fixed and torch.equal(d.model.draft_ids, want) and {3, 7} <= set(want.tolist())
    assert torch.equal(d.model.t2d.nonzero().flatten(), want)
    assert torch.equal(d.distill_head(), lm_head[want])
    after = d.evaluate(batch)
    assert after.loss < 0.5 * before.loss and after.top1_agreement > 0.8
    fresh = OnlineDrafter(DrafterConfig(method="eagle3", train_vocab=8), CFG, emb, lm_head, 1.0)
    fresh.load_state_dict(d.state_dict())
    assert fresh.vocab_fixed and torch.equal(fresh.model.draft_ids, want)
    fresh.add(_batch(1))  # other tokens later: the vocabulary stays (the engine's head has its shape and mapping)
    fresh.train(budget_s=1e9, max_steps=1)
    assert torch.equal(fresh.model.draft_ids, want)


def test_ranks_choose_one_draft_vocabulary_from_their_summed_counts():
    emb, lm_head = torch.randn(V, H), torch.randn(V, H)
    d = OnlineDrafter(DrafterConfig(method="eagle3", train_vocab=4), CFG, emb, lm_head, 1.0)
    d.add(_skewed())
    other = torch.zeros(V, dtype=torch.long)
    other[30:34] = 10 ** 6  # the other rank's rows use tokens 30..33 far more
    d.fix_vocab(lambda t: t + other)
    assert d.model.draft_ids.tolist() == [30, 31, 32, 33]


def test_checkpoint_is_the_layout_vllm_and_sglang_load(tmp_path):
    from safetensors.torch import load_file

    emb, lm_head = torch.randn(V, H), torch.randn(V, H)
    d = OnlineDrafter(DrafterConfig(method="eagle3", train_vocab=8), CFG, emb, lm_head, 1.0)
    d.add(_skewed())
    d.train(budget_s=1e9, max_steps=2)
    out = d.export(tmp_path / "d")
    assert out.method == "eagle3"
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLMEagle3"] and cfg["num_hidden_layers"] == 1
    assert cfg["draft_vocab_size"] == 8 and cfg["vocab_size"] == V and cfg["target_hidden_size"] == H
    assert "eagle_aux_hidden_state_layer_ids" not in json.dumps(cfg)  # the engines read explicit ids one layer apart
    state = load_file(str(tmp_path / "d" / "model.safetensors"))
    assert state["fc.weight"].shape == (H, 3 * H) and state["lm_head.weight"].shape == (8, H)
    assert state["midlayer.self_attn.q_proj.weight"].shape == (64, 2 * H)
    assert {"midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "norm.weight"} <= set(state)
    assert not any("embed_tokens" in k for k in state)  # both engines share the target's
    d2t, t2d = state["d2t"], state["t2d"]
    assert torch.equal(torch.arange(8) + d2t, d.model.draft_ids) and int(t2d.sum()) == 8
    again = Eagle3Head.load(tmp_path / "d")
    for k, v in d.model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    # the whole vocabulary: no mapping in the file, and the head reads back the same
    full = OnlineDrafter(DrafterConfig(method="eagle3"), CFG, emb, lm_head, 1.0)
    full.export(tmp_path / "f")
    assert "d2t" not in load_file(str(tmp_path / "f" / "model.safetensors"))
    assert torch.equal(Eagle3Head.load(tmp_path / "f").lm_head.weight, full.model.lm_head.weight)


def test_init_reads_an_eagle3_checkpoint_and_checks_its_draft_vocabulary(tmp_path):
    from safetensors.torch import load_file, save_file

    emb, lm_head = torch.randn(V, H), torch.randn(V, H)
    d = OnlineDrafter(DrafterConfig(method="eagle3", train_vocab=8), CFG, emb, lm_head, 1.0)
    d.add(_skewed())
    d.train(budget_s=1e9, max_steps=2)
    path = d.export(tmp_path / "d").path
    state = read_weights(path, CFG, "eagle3", train_vocab=8)
    assert all(torch.equal(state[k], v) for k, v in d.model.state_dict().items())
    with pytest.raises(ValueError, match="drafts over 8 tokens; this run's drafter.train_vocab=16 asks for 16"):
        read_weights(path, CFG, "eagle3", train_vocab=16)
    with pytest.raises(ValueError, match="is a 'eagle3' drafter; this run's drafter.method is 'eagle'"):
        read_weights(path, CFG, "eagle")
    # a published head: vLLM's name for the layer (layers.0), no Laconic keys in its config
    pub = tmp_path / "pub"
    pub.mkdir()
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    (pub / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if not k.startswith("laconic_")}))
    save_file({k.replace("midlayer.", "layers.0."): v for k, v in load_file(f"{path}/model.safetensors").items()},
              str(pub / "model.safetensors"))
    fresh = OnlineDrafter(DrafterConfig(method="eagle3", train_vocab=8), CFG, emb, lm_head, 1.0)
    fresh.load_state_dict(fresh.state_dict() | {"model": read_weights(pub, CFG, "eagle3", 8), "vocab_fixed": True})
    b = _skewed(2)
    torch.testing.assert_close(fresh.evaluate(b).loss, d.evaluate(b).loss)


def test_objective_is_kl_over_the_draft_vocabulary_without_regression():
    head = _head(torch.tensor([0, 2, 4, 6]))
    b = _batch()
    lm_rows, emb = torch.randn(4, H), torch.randn(V, H)
    loss, _, n = head.loss(b, emb, lm_rows, 1.0, 1.0, reg_weight=5.0, depth=1)  # reg_weight has no effect
    sel = b.target[:, 1:] & b.valid[:, 1:]
    assert n == int(sel.sum())
    f = head.forward(b.token_ids[:, 1:], b.aux_hidden[:, :-1], None, emb)[sel]
    tgt = F.log_softmax(b.hidden_states[:, 1:][sel] @ lm_rows.t(), -1)
    want = F.kl_div(F.log_softmax(head.logits(f), -1), tgt, log_target=True, reduction="sum") / n
    torch.testing.assert_close(loss, want)
