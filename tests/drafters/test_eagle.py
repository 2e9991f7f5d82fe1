"""The EAGLE head and the standalone draft LM in plain torch: Llama semantics exactly (so vLLM runs what we train),
vLLM's pairing of tokens and hidden states (no off-by-one), learning on a fixed batch, and the checkpoint layout."""
import json
from pathlib import Path

import pytest
import torch

from drafters.config import DrafterConfig
from drafters.eagle import DecoderLayer, EagleHead, llama_sizes
from drafters.online import OnlineDrafter
from drafters.types import DrafterBatch

pytestmark = pytest.mark.unit

CFG = {"hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 128,
       "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "vocab_size": 40, "max_position_embeddings": 128,
       "model_type": "llama", "hidden_act": "silu"}


def test_decoder_layer_is_llamas_without_input_norm_at_given_positions():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(**CFG, num_hidden_layers=1)
    hf = LlamaDecoderLayer(hf_cfg, layer_idx=0).eval()
    hf.input_layernorm = torch.nn.Identity()  # vLLM's EAGLE layer 0
    ours = DecoderLayer(llama_sizes(CFG)).eval()
    missing = ours.load_state_dict({k: v for k, v in hf.state_dict().items()}, strict=False)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, 7, 64)
    pos = torch.arange(3, 10).expand(2, 7)  # a window that does not start at 0: positions must be honoured
    cos, sin = LlamaRotaryEmbedding(hf_cfg)(x, pos)
    causal = torch.full((7, 7), float("-inf")).triu(1)[None, None]
    want = hf(x, attention_mask=causal, position_embeddings=(cos, sin))
    want = want[0] if isinstance(want, tuple) else want
    torch.testing.assert_close(ours(x, pos, torch.ones(2, 7, dtype=torch.bool)), want, atol=1e-5, rtol=1e-5)


def test_head_pairs_next_token_with_current_hidden_state():
    """Pair p = (token_{p+1}, h_p) -> target h_{p+1}: with an oracle that returns h_{p+1}, the loss is exactly the
    regression-free KL of identical distributions (0); pairing (token_p, h_p) would not be learnable at all."""
    torch.manual_seed(0)
    b, l, h, v = 2, 6, 64, 40
    ids, hid = torch.randint(0, v, (b, l)), torch.randn(b, l, h)
    valid, target = torch.ones(b, l, dtype=torch.bool), torch.zeros(b, l, dtype=torch.bool)
    target[:, 2:5] = True
    head = EagleHead(llama_sizes(CFG))
    seen = {}

    def oracle(next_ids, hidden, valid_, embed, positions=None):
        seen["next_ids"], seen["hidden"] = next_ids, hidden
        return torch.cat([hid[:, 1:], torch.zeros(b, 1, h)], 1)[:, : next_ids.shape[1]]  # h_{p+1}

    head.forward = oracle
    loss, agree, n = head.loss(DrafterBatch(ids, hid, valid, target), torch.randn(v, h), torch.randn(v, h), 1.0,
                               1.0, 0.0)
    assert torch.equal(seen["next_ids"], ids[:, 1:]) and torch.equal(seen["hidden"], hid[:, :-1])
    assert n == 6 and int(agree) == 6 and float(loss) == pytest.approx(0.0, abs=1e-6)


def _propose_like_vllm(head, ids, hid, emb, last: int, steps: int) -> list[torch.Tensor]:
    """vLLM's proposal round after verifying up to position ``last``, one query at a time with an explicit KV cache:
    teacher-forced KV for positions 0..last from (token_{p+1}, h_p), then each further step at position last+j-1 feeds
    the previous step's output back with the (accepted) next token. -> the outputs f of steps 1..steps."""
    import math

    layer = head.layers[0]
    x = head.fc(torch.cat([emb[ids[1:last + 2]], hid[:last + 1]], -1))[None]  # [1,last+1,H]
    pos = torch.arange(last + 1)[None]
    _, k, v = layer.qkv(x, pos)
    keys, values = [k], [v]
    f = head.forward(ids[None, 1:last + 2], hid[None, :last + 1], torch.ones(1, last + 1, dtype=torch.bool),
                     emb)[0, last]
    outs = [f]
    for j in range(2, steps + 1):
        p = last + j - 1
        xq = head.fc(torch.cat([emb[ids[p + 1]], f], -1))[None, None]  # [1,1,H]
        q, k, v = layer.qkv(xq, torch.tensor([[p]]))
        keys.append(k)
        values.append(v)
        att = torch.softmax(q @ torch.cat(keys, 2).transpose(-1, -2) / math.sqrt(layer.hd), -1) @ torch.cat(values, 2)
        f = layer.finish(xq, att)[0, 0]
        outs.append(f)
    return outs


def test_unrolled_training_steps_are_vllms_proposal_steps():
    """Chain step i of a round that verified up to position s (the training-time test) computes exactly what vLLM
    computes at proposal step i of that round; step 1 is the teacher-forced forward."""
    torch.manual_seed(1)
    l, h, v = 12, 64, 40
    head = EagleHead(llama_sizes(CFG))
    for prm in head.parameters():
        torch.nn.init.normal_(prm, std=0.2)
    ids, hid, emb = torch.randint(0, v, (l,)), torch.randn(l, h), torch.randn(v, h)
    starts = torch.tensor([[0, 3, 6, 7]])
    f1, deeper = head.chain_outputs(ids[None, 1:], hid[None, :-1], emb, 4, starts)
    torch.testing.assert_close(f1, head.forward(ids[None, 1:], hid[None, :-1], torch.ones(1, l - 1, dtype=torch.bool),
                                                emb))
    for m, last in enumerate(starts[0].tolist()):
        want = _propose_like_vllm(head, ids, hid, emb, last, 4)
        torch.testing.assert_close(f1[0, last], want[0], atol=1e-3, rtol=1e-4)
        for i in range(2, 5):
            torch.testing.assert_close(deeper[i - 2][0, m], want[i - 1], atol=1e-3, rtol=1e-4)


def test_unrolled_objective_trains_later_steps():
    """Same start, same steps: trained with depth 3 the head's step-2 and step-3 outputs (which read its own earlier
    outputs, as in vLLM) land closer to the policy's hidden states than when trained teacher-forced only."""
    batch, emb, lm = _fixed_batch()
    n = batch.token_ids.shape[1] - 1
    starts = torch.arange(n - 2).expand(batch.token_ids.shape[0], n - 2)

    def train(depth):
        torch.manual_seed(0)
        head = EagleHead(llama_sizes(CFG))
        opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
        for _ in range(80):
            loss, _, _ = head.loss(batch, emb, lm, 1.0, 1.0, 0.1, depth=depth, chains=32)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            _, deeper = head.chain_outputs(batch.token_ids[:, 1:], batch.hidden_states[:, :-1], emb, 3, starts)
        errs = []
        for i, f in enumerate(deeper, start=2):
            p = starts + i - 1
            ok = batch.target[:, 1:].gather(1, p)
            errs.append(float(torch.nn.functional.mse_loss(f[ok], batch.hidden_states[:, 1:].gather(
                1, p[..., None].expand(*p.shape, f.shape[-1]))[ok])))
        return errs

    flat, deep = train(1), train(3)
    assert deep[0] < 0.8 * flat[0] and deep[1] < 0.8 * flat[1], (flat, deep)


def _fixed_batch(seed=0):
    """A learnable toy: the next hidden state is a fixed function of the current token and hidden state."""
    g = torch.Generator().manual_seed(seed)
    b, l, h, v = 16, 24, 64, 40
    emb = torch.randn(v, h, generator=g)
    ids = torch.randint(0, v, (b, l), generator=g)
    hid = torch.zeros(b, l, h)
    hid[:, 0] = torch.randn(b, h, generator=g)
    for p in range(1, l):
        hid[:, p] = torch.tanh(0.5 * hid[:, p - 1] + emb[ids[:, p]])
    target = torch.ones(b, l, dtype=torch.bool)
    target[:, :3] = False
    return DrafterBatch(ids, hid, torch.ones(b, l, dtype=torch.bool), target), emb, torch.randn(v, h, generator=g)


@pytest.mark.parametrize("method", ["eagle", "draft_model"])
def test_training_on_a_fixed_batch_lowers_loss_and_raises_top1(method):
    batch, emb, head = _fixed_batch()
    d = OnlineDrafter(DrafterConfig(method=method, lr=3e-3, batch_rows=16), CFG, emb, head, temperature=1.0)
    before = d.evaluate(batch)
    d.add(batch)
    d.train(budget_s=1e9, max_steps=150)
    after = d.evaluate(batch)
    assert after.loss < 0.5 * before.loss
    assert after.top1_agreement > before.top1_agreement + 0.2 and after.top1_agreement > 0.8


def test_loaded_weights_ramp_the_learning_rate_of_a_fresh_optimizer():
    """drafter.init: a fresh AdamW moves every weight by ~lr on its first step whatever the gradient; with
    init_lr_ramp=R the first step moves none by more than lr / R, and the ramp survives a checkpoint."""
    batch, emb, head = _fixed_batch()
    trained = OnlineDrafter(DrafterConfig(lr=3e-3, batch_rows=16), CFG, emb, head, temperature=1.0)
    trained.add(batch)
    trained.train(budget_s=1e9, max_steps=40)
    moves = {}
    for ramp in (0, 25):
        d = OnlineDrafter(DrafterConfig(lr=1e-2, batch_rows=16), CFG, emb, head, temperature=1.0)
        state = d.state_dict() | {"model": trained.model.state_dict(), "lr_ramp": ramp}
        d.load_state_dict(state)
        d.add(batch)
        before = [p.detach().clone() for p in d.model.parameters()]
        d.train(budget_s=1e9, max_steps=1)
        moves[ramp] = max(float((p.detach() - b).abs().max()) for p, b in zip(d.model.parameters(), before))
        again = OnlineDrafter(DrafterConfig(lr=1e-2, batch_rows=16), CFG, emb, head, temperature=1.0)
        again.load_state_dict(d.state_dict())
        assert again.lr_ramp == ramp
    assert moves[0] > 0.5e-2 and moves[25] <= 1e-2 / 25 * 1.01


def test_replay_window_keeps_its_last_steps_and_widens_for_the_final_fit():
    batch, emb, head = _fixed_batch()
    rows = batch.token_ids.shape[0]
    d = OnlineDrafter(DrafterConfig(replay_steps=2, max_rows_per_step=rows), CFG, emb, head, temperature=1.0)
    for _ in range(3):
        d.new_step()
        d.add(batch)
    assert d.rows() == 2 * rows  # the oldest step fell out
    d.widen(4)
    d.widen(1)  # never narrower than it is
    for _ in range(3):
        d.new_step()
        d.add(batch)
    assert d.rows() == 4 * rows


def test_stats_of_two_updates_combine_weighted_by_steps():
    from drafters.types import DrafterStats

    a, b = DrafterStats(1.0, 0.5, 2.0, steps=1, tokens=10), DrafterStats(4.0, 0.8, 3.0, steps=3, tokens=30)
    c = a.plus(b)
    assert (c.loss, c.top1_agreement, c.train_s, c.steps, c.tokens) == pytest.approx((3.25, 0.725, 5.0, 4, 40))
    none = DrafterStats(0.0, 0.0, 0.0)
    assert none.plus(none) == none and none.plus(a) == a


def test_eagle_checkpoint_round_trips_in_vllm_layout(tmp_path):
    head = EagleHead(llama_sizes(CFG))
    head.save(tmp_path / "d", CFG)
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / "d" / "model.safetensors")))
    assert "fc.weight" in keys and "layers.0.self_attn.q_proj.weight" in keys
    assert not any("input_layernorm" in k or "embed_tokens" in k or "lm_head" in k for k in keys)  # vLLM shares them
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 1 and cfg["architectures"] == ["LlamaForCausalLM"]
    again = EagleHead.load(tmp_path / "d")
    for (k, a), (_, b) in zip(head.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_sizes_reject_unsupported_rope():
    with pytest.raises(ValueError, match="plain RoPE"):
        llama_sizes(CFG | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})


def test_train_vocab_distils_over_the_most_used_tokens():
    """drafter.train_vocab=N: the loss sees the LM-head rows of the N tokens the added rows use most, in id order;
    training on them teaches the head; the counts survive a resume."""
    batch, emb, head = _fixed_batch()
    ids = batch.token_ids.clone()
    ids[ids >= 12] = ids[ids >= 12] % 12  # only tokens 0..11 occur, 3 and 7 most
    ids[:, ::3] = 3
    ids[:, 1::5] = 7
    batch = DrafterBatch(ids, batch.hidden_states, batch.valid, batch.target)
    d = OnlineDrafter(DrafterConfig(lr=3e-3, batch_rows=16, train_vocab=8), CFG, emb, head, temperature=1.0)
    assert d.distill_head().shape == head.shape  # nothing counted yet: every row of the head
    d.add(batch)
    counts = torch.bincount(ids.flatten(), minlength=40)
    expect = torch.topk(counts, 8).indices.sort().values
    assert torch.equal(d.distill_head(), head[expect]) and {3, 7} <= set(expect.tolist())
    before = d.evaluate(batch)  # over the 8 kept tokens
    d.train(budget_s=1e9, max_steps=150)
    after = d.evaluate(batch)
    assert after.loss < 0.5 * before.loss and after.top1_agreement > max(0.8, before.top1_agreement + 0.2)
    fresh = OnlineDrafter(DrafterConfig(lr=3e-3, batch_rows=16, train_vocab=8), CFG, emb, head, temperature=1.0)
    fresh.load_state_dict(d.state_dict())
    assert torch.equal(fresh.distill_head(), d.distill_head())


def test_train_vocab_needs_the_eagle_head():
    from drafters.config import validate

    with pytest.raises(ValueError, match="drafter.train_vocab=8 needs drafter.method=eagle"):
        validate(DrafterConfig(method="draft_model", train_vocab=8), 512)


def test_init_checkpoint_is_checked_against_the_policy(tmp_path):
    """drafter.init reads a drafter export back as it was written, and refuses one made for another model, another
    method or a folder that is not a checkpoint, naming the folder."""
    from drafters.online import read_weights

    batch, emb, head = _fixed_batch()
    d = OnlineDrafter(DrafterConfig(), CFG, emb, head, temperature=1.0)
    d.add(batch)
    d.train(budget_s=1e9, max_steps=3)
    out = Path(d.export(tmp_path / "d").path)
    state = read_weights(out, CFG, "eagle")
    assert all(torch.equal(state[k], v) for k, v in d.model.state_dict().items())
    with pytest.raises(ValueError, match="made for another model.*hidden_size"):
        read_weights(out, CFG | {"hidden_size": 128, "head_dim": 64}, "eagle")
    with pytest.raises(ValueError, match="is a 'eagle' drafter; this run's drafter.method is 'draft_model'"):
        read_weights(out, CFG, "draft_model")
    with pytest.raises(ValueError, match="not a drafter checkpoint"):
        read_weights(tmp_path, CFG, "eagle")
    from safetensors.torch import save_file

    save_file({"fc.weight": torch.zeros(64, 128)}, str(out / "model.safetensors"))
    with pytest.raises(ValueError, match="missing .*layers.0"):
        read_weights(out, CFG, "eagle")
    from drafters.config import validate

    with pytest.raises(ValueError, match="drafter.init='/no/such' must be"):
        validate(DrafterConfig(init="/no/such"), 512)
    validate(DrafterConfig(init="cache"), 512)
