"""Tests for the embedded arithmetic task, its tokenizer and the cached base-model build."""
from __future__ import annotations

import json
import random
import statistics

import pytest

from recipes.tasks import TASKS, Task, arith, register
from rewards.verifiers import exact_integer, extract_answer, thinking_span


@pytest.fixture(scope="module")
def splits():
    return arith.make_splits(seed=0, n_train=2000, n_eval=300)


@pytest.fixture(scope="module")
def tokenizer():
    from recipes.tasks.tokenizer import build_tokenizer

    return build_tokenizer()


# ----------------------------------------------------------------------------------------------- task
@pytest.mark.unit
def test_splits_are_deterministic(splits):
    assert arith.make_splits(0, 2000, 300) == splits
    other = arith.make_splits(1, 2000, 300)
    assert [r["prompt"] for r in other[0]] != [r["prompt"] for r in splits[0]]


@pytest.mark.unit
def test_splits_are_disjoint_unique_and_well_formed(splits):
    train, evl = splits
    assert len(train) == 2000 and len(evl) == 300
    train_prompts = {r["prompt"] for r in train}
    eval_prompts = {r["prompt"] for r in evl}
    assert len(train_prompts) == len(train) and len(eval_prompts) == len(evl)
    assert not train_prompts & eval_prompts
    assert train[42]["uid"] == "arith-train-00042" and evl[0]["uid"] == "arith-eval-00000"
    for row in train + evl:
        assert set(row) == {"uid", "prompt", "answer"}
        assert row["prompt"].endswith("\n") and row["answer"] == str(int(row["answer"]))


@pytest.mark.unit
def test_prompt_parses_back_and_values_stay_small(splits):
    for row in splits[0][:500]:
        problem = arith.parse_prompt(row["prompt"])
        assert arith.format_prompt(problem) == row["prompt"]
        assert str(problem.answer) == row["answer"]
        assert len(problem.ops) == arith.N_OPS
        assert all(0 <= v <= arith.MAX_VALUE for v in problem.values())


@pytest.mark.unit
def test_every_trace_verifies_and_wrong_answers_do_not(splits):
    for row in splits[0] + splits[1]:
        trace = arith.make_trace(row, arith.trace_rng(0, row["uid"]))
        assert exact_integer(trace, row["answer"]), trace
        assert not exact_integer(trace, str(int(row["answer"]) + 1))
        assert trace.startswith("<think>\n") and thinking_span(trace) is not None


@pytest.mark.unit
def test_trace_is_deterministic_given_rng(splits):
    row = splits[0][3]
    assert arith.make_trace(row, random.Random(5)) == arith.make_trace(row, random.Random(5))


@pytest.mark.unit
def test_minimal_trace_is_exactly_the_work_plus_answer():
    problem = arith.Problem(7, (("+", 5), ("*", 3), ("-", 4)))
    trace = arith.make_trace(problem, random.Random(0), n_rechecks=0)
    assert trace == "<think>\n07+05=12. 12*03=36. 36-04=32.\n</think>\nAnswer: 32"
    assert extract_answer(trace) == "32"
    two = arith.make_trace(problem, random.Random(0), n_rechecks=2)
    assert two.count("Let me double-check") == 2 and "(2)" in two and exact_integer(two, "32")


@pytest.mark.unit
def test_recheck_lengths_are_long_tailed(splits, tokenizer):
    rows = (splits[0] * 2)[:2000]
    lengths = sorted(len(tokenizer(arith.make_trace(r, random.Random(i)))["input_ids"]) for i, r in enumerate(rows))
    median, p90 = statistics.median(lengths), lengths[int(0.9 * len(lengths))]
    minimal = statistics.fmean(len(tokenizer(arith.make_trace(r, None, n_rechecks=0))["input_ids"]) for r in rows)
    assert p90 >= 2 * median, (median, p90)
    assert minimal <= p90 / 3, (minimal, p90)
    assert lengths[-1] <= 400
    counts = [arith.sample_rechecks(random.Random(i)) for i in range(2000)]
    assert max(counts) == arith.MAX_RECHECKS and 0.25 < counts.count(0) / len(counts) < 0.5


@pytest.mark.unit
def test_registry_holds_arith_and_rejects_duplicates():
    task = TASKS["arith"]
    assert task.verifier == "exact_integer" and task.make_splits is arith.make_splits
    with pytest.raises(ValueError):
        register(Task("arith", arith.make_splits, arith.make_trace, arith.format_prompt, "exact_integer"))


# ------------------------------------------------------------------------------------------ tokenizer
def _task_texts(splits, n=200):
    for row in splits[1][:n]:
        yield row["prompt"] + arith.make_trace(row, arith.trace_rng(1, row["uid"]))


@pytest.mark.unit
def test_tokenizer_round_trips_task_text_character_by_character(splits, tokenizer):
    for text in _task_texts(splits):
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text
        expected = len(text) - text.count("</think>") * 7 - text.count("<think>") * 6
        assert len(ids) == expected  # one id per character, one per think tag, nothing added
    odd = "  a\n\n b .  ,\t~"
    assert tokenizer.decode(tokenizer(odd)["input_ids"]) == odd


@pytest.mark.unit
def test_tokenizer_special_tokens_and_single_id_decode(tokenizer):
    ids = tokenizer("12")["input_ids"]
    assert len(ids) == 2 and tokenizer.bos_token_id not in ids
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    assert len(specials) == 4 and None not in specials
    assert tokenizer.decode([tokenizer.convert_tokens_to_ids(" ")]) == " "
    assert tokenizer.decode([tokenizer.convert_tokens_to_ids("\n")]) == "\n"
    think = tokenizer("<think>")["input_ids"]
    assert len(think) == 1 and tokenizer.decode(think, skip_special_tokens=True) == "<think>"
    assert tokenizer.decode([*ids, tokenizer.eos_token_id], skip_special_tokens=True) == "12"


@pytest.mark.unit
def test_tokenizer_streaming_decode_matches_full_decode(splits, tokenizer):
    from tokenizers.decoders import DecodeStream

    text = next(_task_texts(splits))
    ids = tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    stream, out = DecodeStream(skip_special_tokens=True), ""
    for i in ids:
        out += stream.step(tokenizer.backend_tokenizer, i) or ""
    assert out == text


@pytest.mark.unit
def test_tokenizer_save_and_reload(tmp_path, splits, tokenizer):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert len(again) == len(tokenizer) and again.eos_token_id == tokenizer.eos_token_id
    for text in _task_texts(splits, 20):
        assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert again.decode(again(text)["input_ids"]) == text


# ------------------------------------------------------------------------------------------ base model
@pytest.mark.unit
def test_build_params_validate_and_hash_stably():
    from recipes.tasks import base_model as bm

    key = bm.build_key(bm.build_params(0))
    assert key == bm.build_key(bm.build_params(0)) and key.startswith("arith-base-")
    assert key != bm.build_key(bm.build_params(1))
    assert key != bm.build_key(bm.build_params(0, max_steps=7))
    with pytest.raises(TypeError):
        bm.build_params(0, not_a_parameter=1)


@pytest.mark.unit
def test_length_instruction_build_keeps_the_default_key_and_states_each_trace_length_loosely():
    from recipes.tasks import arith
    from recipes.tasks import base_model as bm
    from recipes.tasks.tokenizer import build_tokenizer

    default = bm.build_params(0)
    assert not set(bm.OPTIONAL_BUILD) & set(default)  # at their defaults the new parameters leave the cache key alone
    assert bm.build_key(bm.build_params(0, length_instructions=0.0)) == bm.build_key(default)
    params = bm.build_params(0, length_instructions=0.5, instruction_spread=0.5)
    assert bm.build_key(params) != bm.build_key(default)
    for bad in (dict(length_instructions=1.5), dict(instruction_mode="soft"), dict(instruction_spread=1.0)):
        with pytest.raises(ValueError):
            bm.build_params(0, **bad)
    tok = build_tokenizer()
    train, _ = arith.make_splits(0, 400, 4)
    plain, rows = bm.sft_rows(train, 0, tok), bm.sft_rows(train, 0, tok, params)
    assert [r["completion"] for r in plain] == [r["completion"] for r in rows]
    assert all("Think" not in r["prompt"] for r in plain)
    stated = [r for r in rows if "Think for" in r["prompt"]]
    assert 0.4 < len(stated) / len(rows) < 0.6
    for r, p in zip(rows, plain):
        if r in stated:
            n = int(r["prompt"].split("Think for ")[1].split(" ")[0])
            length = len(tok(r["completion"])["input_ids"]) + 1
            assert 0.5 * length - 1 <= n <= 1.5 * length + 1
            assert r["prompt"] == f"{p['prompt'].rstrip()}\nThink for {n} tokens.\n"  # as data.length_target writes it
        else:
            assert r == p
    assert bm.sft_rows(train[:50], 0, tok, params) == rows[:50]  # per-row draws: independent of the other rows


@pytest.mark.unit
def test_a_long_tail_build_gives_reasoning_rls_length_shape():
    """``tail_share``: that share of traces re-checks ``tail_rechecks`` times, the rest is the default build's, and the
    lengths come out as reasoning RL's: p99 / median >= 10. The default key is untouched."""
    from recipes.tasks import arith
    from recipes.tasks import base_model as bm

    assert bm.build_key(bm.build_params(0, tail_share=0.0)) == bm.build_key(bm.build_params(0))
    params = bm.build_params(0, tail_share=0.04, tail_rechecks=[18, 34])
    assert bm.build_key(params) != bm.build_key(bm.build_params(0))
    for bad in (dict(tail_share=1.0), dict(tail_rechecks=[6, 10]), dict(tail_rechecks=[20, 18])):
        with pytest.raises(ValueError, match="tail_"):
            bm.build_params(0, **bad)
    train, _ = arith.make_splits(0, 4000, 4)
    plain, rows = bm.sft_rows(train, 0), bm.sft_rows(train, 0, None, params)
    tail = [r for r, p in zip(rows, plain) if r != p]
    assert 0.03 < len(tail) / len(rows) < 0.05
    assert all(18 <= r["completion"].count("Let me double-check") <= 34 for r in tail)
    assert all(r["completion"].count("Let me double-check") <= arith.MAX_RECHECKS for r in rows if r not in tail)
    lengths = sorted(len(r["completion"]) for r in rows)  # characters = tokens of the character-level tokenizer
    assert lengths[int(0.99 * len(lengths))] >= 10 * lengths[len(lengths) // 2]
    assert bm.sft_rows(train[:50], 0, None, params) == rows[:50]  # per-row draws


@pytest.mark.unit
def test_cache_root_honours_env(monkeypatch, tmp_path):
    from recipes.tasks import base_model as bm

    monkeypatch.setenv("LACONIC_CACHE", str(tmp_path))
    assert bm.cache_root() == tmp_path
    assert bm.cache_root(tmp_path / "x") == tmp_path / "x"


TINY = dict(n_train=64, n_eval=8, max_steps=4, batch_size=4, warmup_steps=1, eval_max_new_tokens=32, eval_batch_size=8)


@pytest.mark.slow
def test_ensure_base_model_builds_once_then_hits_cache(tmp_path, monkeypatch):
    from recipes.tasks import base_model as bm

    folder = bm.ensure_base_model(cache_dir=str(tmp_path), seed=3, **TINY)
    assert folder.parent == tmp_path and bm.is_complete(folder)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temp folders left behind
    report = json.loads((folder / "base_report.json").read_text())
    for key in ("accuracy", "mean_tokens", "median_tokens", "p90_tokens", "max_tokens", "truncated_fraction",
                "build_seconds", "num_params", "n_train", "n_eval", "seed"):
        assert key in report, key
    assert report["n_eval"] == 8 and report["seed"] == 3 and 0.0 <= report["accuracy"] <= 1.0
    assert json.loads((folder / "build_config.json").read_text()) == bm.build_params(3, **TINY)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is False

    def no_rebuild(*args, **kwargs):
        raise AssertionError("cached model was rebuilt")

    monkeypatch.setattr(bm, "build_base_model", no_rebuild)
    assert bm.ensure_base_model(cache_dir=str(tmp_path), seed=3, **TINY) == folder


@pytest.mark.unit
def test_failed_build_leaves_no_folder(tmp_path, monkeypatch):
    from recipes.tasks import base_model as bm

    def boom(out, params):
        (out / "config.json").write_text("{}")
        raise RuntimeError("interrupted")

    monkeypatch.setattr(bm, "build_base_model", boom)
    with pytest.raises(RuntimeError):
        bm.ensure_base_model(cache_dir=str(tmp_path), seed=0, **TINY)
    assert list(tmp_path.iterdir()) == []
