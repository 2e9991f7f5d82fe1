"""Lookup drafts (rollout/lookup.py): what the index proposes, from which text, and what it never proposes."""
import numpy as np
import pytest

from rollout.lookup import LookupIndex, LookupProposer

pytestmark = pytest.mark.unit


def test_own_text_repeats_are_drafted_from_the_latest_occurrence():
    idx = LookupIndex(n_min=2, n_max=3)
    prompt = [1, 2, 3]
    idx.sync("a", prompt, prompt + [7, 8, 9, 5, 7, 8])
    # last 3 tokens "5 7 8" never occurred before; "7 8" did, followed by 9 5 7 8
    assert idx.propose("a", 3) == [9, 5, 7]
    idx.sync("a", prompt, prompt + [7, 8, 9, 5, 7, 8, 4, 7, 8])
    assert idx.propose("a", 2) == [4, 7]  # the latest "7 8" (followed by 4) wins over the first


def test_longest_match_wins_and_no_match_drafts_nothing():
    idx = LookupIndex(n_min=2, n_max=3)
    idx.sync("a", [9], [9, 1, 2, 3, 4, 5, 2, 3, 6, 0, 1, 2, 3])
    # "1 2 3" (3 tokens) occurred once, followed by 4; "2 3" occurred later, followed by 6: the longer match wins
    assert idx.propose("a", 2) == [4, 5]
    idx.sync("b", [8], [8, 40, 41, 42])
    assert idx.propose("b", 4) == []  # nothing repeats; other prompts' text is not searched


def test_siblings_of_the_same_prompt_are_searched_and_other_prompts_are_not():
    idx = LookupIndex(n_min=2, n_max=4)
    prompt = [5, 6]
    idx.sync("g0", prompt, prompt + [10, 11, 12, 13, 14, 15])
    idx.sync("g1", prompt, prompt + [10, 11])
    assert idx.propose("g1", 3) == [12, 13, 14]  # the sibling ran ahead on the same path
    idx.sync("other", [5, 7], [5, 7, 10, 11])
    assert idx.propose("other", 3) == []  # same tokens, another prompt: no draft
    # the prompt itself is text to draft from: a completion re-stating the prompt continues it
    idx.sync("p", [20, 21, 22, 23], [20, 21, 22, 23, 1, 20, 21])
    assert idx.propose("p", 2) == [22, 23]


def test_earlier_completions_of_a_prompt_survive_their_request():
    idx = LookupIndex(n_min=2, n_max=3)
    prompt = [3, 3, 3]
    idx.sync("old", prompt, prompt + [1, 2, 30, 31, 32])
    idx.retire(["new"])  # "old" finished; its text stays with the prompt
    assert "old" not in idx.live
    idx.sync("new", prompt, prompt + [1, 2])
    assert idx.propose("new", 3) == [30, 31, 32]


def test_drafts_follow_the_text_exactly_on_random_sequences():
    """Every draft is a verbatim continuation of an earlier occurrence of the request's last n tokens."""
    rng = np.random.default_rng(0)
    idx = LookupIndex(n_min=2, n_max=4)
    seq = [int(t) for t in rng.integers(0, 6, size=400)]  # a small vocabulary: many repeats
    hits = 0
    for end in range(10, len(seq)):
        idx.sync("r", seq[:3], seq[:end])
        draft = idx.propose("r", 4)
        if not draft:
            continue
        hits += 1
        found = False
        for n in range(4, 1, -1):
            tail = seq[end - n:end]
            starts = [i for i in range(end - n) if seq[i:i + n] == tail]
            if starts:  # the longest matching n: the draft is what followed its latest occurrence
                i = starts[-1] + n
                found = draft == seq[i:i + 4][:len(draft)] and len(draft) == min(4, end - i)
                break
        assert found, (end, draft)
    assert hits > 300


def test_the_prompt_table_is_shared_and_memory_is_bounded():
    idx = LookupIndex(n_min=2, n_max=2, max_groups=2)
    for g in range(3):
        idx.sync(f"r{g}", [g, g + 1], [g, g + 1, 9])
    assert len(idx.groups) == 2 and np.asarray([0, 1], dtype=np.int64).tobytes() not in idx.groups


def test_proposer_needs_binding_and_respects_k_and_the_context():
    p = LookupProposer()
    with pytest.raises(RuntimeError, match="install"):
        p.propose([[1]], np.array([3]), np.zeros((1, 8), dtype=np.int32))

    class Batch:  # the two fields of vLLM's InputBatch the proposer reads
        req_ids = ["a", "b"]
        num_prompt_tokens = np.array([2, 2])

    class Runner:
        input_batch = Batch()

    p.bind(Runner(), n_min=2, n_max=2)
    p.max_model_len = 9
    tokens = np.zeros((2, 9), dtype=np.int32)
    tokens[0, :8] = [1, 2, 5, 6, 7, 8, 5, 6]
    tokens[1, :4] = [1, 2, 5, 6]
    p.step_k = 3
    out = p.propose([[6], []], np.array([8, 4]), tokens)
    assert out == [[], []]  # row 0: no room before max_model_len (8 + 1 = 9); row 1: nothing sampled this step
    p.max_model_len = 100
    out = p.propose([[6], [6]], np.array([8, 4]), tokens)
    assert out == [[7, 8, 5], [7, 8, 5]]  # row 1 drafts from its sibling row 0 (same prompt)
    p.step_k = 1
    assert p.propose([[6], [6]], np.array([8, 4]), tokens) == [[7], [7]]


def test_without_history_a_prompt_is_forgotten_once_none_of_its_requests_runs():
    idx = LookupIndex(n_min=2, n_max=3, history=False)
    prompt = [3, 3, 3]
    idx.sync("a", prompt, prompt + [1, 2, 30, 31])
    idx.sync("b", prompt, prompt + [1, 2])
    idx.retire(["b"])  # "a" finished while its sibling runs: its text stays
    assert idx.propose("b", 2) == [30, 31]
    idx.retire([])
    idx.sync("c", prompt, prompt + [1, 2])
    assert idx.propose("c", 2) == [] and len(idx.groups) == 1


def test_match_reports_the_matched_length_and_append_extends_a_live_request():
    """``match`` names the n-gram length that matched (0: none); ``append`` adds tokens after what the index holds,
    exactly as a full ``sync`` would."""
    a, b = LookupIndex(n_min=2, n_max=4), LookupIndex(n_min=2, n_max=4)
    prompt, tail = [1, 2, 3], [5, 6, 7, 8, 5, 6, 7]
    a.sync("r", prompt, prompt)
    a.append("r", tail)
    b.sync("r", prompt, prompt + tail)
    assert a.known("r") == b.known("r") == 10 and a.known("other") == -1
    assert a.match("r", 2) == b.match("r", 2) == ([8, 5], 3)  # "5 6 7" (3 tokens: "8 5 6 7" never occurred)
    a.append("r", [9])
    assert a.match("r", 3) == ([], 0)
