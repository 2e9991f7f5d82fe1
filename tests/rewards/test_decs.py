"""DECS token rewards: chunking, first answer-bearing chunk, redundant tokens, and the numbers by hand."""
import pytest
import torch

from rewards import RewardConfig, RewardInput, compute
from rewards.config import DECSConfig
from rewards.decs import first_answer_end, split_chunks

pytestmark = pytest.mark.unit

TEXT = "<think>\n1+1=2. 2*3=6.\nLet me double-check (1).\n1+1=2. 2*3=6.\n</think>\nAnswer: 6"


def test_chunks_are_sentences_and_lines():
    body = "1+1=2. 2*3=6.\nLet me double-check (1).\n"
    assert [body[a:b] for a, b in split_chunks(body)] == ["1+1=2.", "2*3=6.", "Let me double-check (1)."]


def test_first_answer_chunk_and_thinking_end():
    end, close = first_answer_end(TEXT, "6")
    assert TEXT[:end].endswith("2*3=6.") and TEXT[close:].startswith("</think>")
    assert first_answer_end(TEXT, "7") is None  # answer never computed: nothing is redundant
    assert first_answer_end("<think>\n1+1=2.", "2") is None  # thinking never closed


def test_intermediate_value_is_not_a_false_match():
    # "=16" must not match answer "6"
    text = "<think>\n4*4=16. 16-10=6.\n</think>\nAnswer: 6"
    end, _ = first_answer_end(text, "6")
    assert text[:end].endswith("16-10=6.")


def _inp(texts, correct, groups):
    offs = [list(range(len(t))) for t in texts]  # one character per token
    return RewardInput(completions=texts, num_tokens=torch.tensor([len(t) for t in texts]),
                       truncated=torch.zeros(len(texts), dtype=torch.bool), group_ids=torch.tensor(groups),
                       meta=[{"answer": "6", "uid": "a"}] * len(texts), token_offsets=offs,
                       correct=torch.tensor(correct))


def test_token_rewards_by_hand():
    short = "<think>\n1+1=2. 2*3=6.\n</think>\nAnswer: 6"
    cfg = RewardConfig(terms={"decs": 1.0}, decs=DECSConfig(beta=0.1, max_len=100))
    out = compute(_inp([TEXT, short, TEXT], [True, True, False], [0, 0, 0]), cfg)
    tr = out.token_rewards
    n = len(TEXT)
    end, close = first_answer_end(TEXT, "6")
    red = 1 + 0.1 * (1 - n / 100)
    assert tr[0, :end].tolist() == pytest.approx([1.1] * end)
    assert tr[0, end:close].tolist() == pytest.approx([red] * (close - end))
    assert tr[0, close:n].tolist() == pytest.approx([1.1] * (n - close))
    s_end, s_close = first_answer_end(short, "6")
    assert tr[1, s_end:s_close].tolist() == pytest.approx([1 + 0.1 * (1 - len(short) / 100)] * (s_close - s_end))
    assert tr[1, len(short):].abs().sum() == 0  # nothing beyond the completion
    assert tr[2].abs().sum() == 0  # incorrect: zero everywhere
    # the per-sequence summary is the token mean
    assert out.terms["decs"][2] == 0 and out.total[1] == pytest.approx(tr[1, :len(short)].mean())


def test_missing_offsets_is_an_error():
    inp = RewardInput(completions=[TEXT], num_tokens=torch.tensor([5]), truncated=torch.tensor([False]),
                      group_ids=torch.tensor([0]), meta=[{"answer": "6", "uid": "a"}], correct=torch.tensor([True]))
    with pytest.raises(ValueError, match="token_offsets"):
        compute(inp, RewardConfig(terms={"decs": 1.0}, decs=DECSConfig(max_len=10)))


def test_math_detector_and_a_user_detector(tmp_path):
    pytest.importorskip("math_verify")
    from rewards.decs import answer_chunk, math_answer

    assert math_answer("so the probability is \\frac{1}{2}.", "1/2")
    assert not math_answer("we need half of the 1st and 2nd terms", "1/2")
    assert not math_answer("x = 41.", "42")
    judge = tmp_path / "judge.py"
    judge.write_text("def says_yes(chunk, answer):\n    return 'FOUND' in chunk\n")
    text = "<think>\nFirst try. Then FOUND it. Check again.\n</think>\nAnswer: 3"
    _, chunks, first = answer_chunk(text, "3", f"{judge}:says_yes")
    body = text[len("<think>"):text.index("</think>")]
    assert "FOUND" in body[chunks[first][0]:chunks[first][1]] and first >= 1
