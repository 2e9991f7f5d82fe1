"""Aggregation modes by hand, and the same scalar however the batch is split over ranks or micro-batches."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from trainers.aggregation import AGGREGATIONS, GlobalCounts, aggregate, local_counts

L = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [2.0, 2.0, 0.0]])
M = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)


def _g(mask, norm=4.0):
    c = local_counts(mask)
    return GlobalCounts(float(c[0]), float(c[1]), norm)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", (6 + 4 + 4) / 6),                    # all valid tokens weigh the same
    ("seq-mean-token-mean", (2 + 4 + 2) / 3),           # per-sequence means, then their mean
    ("seq-mean-token-sum", (6 + 4 + 4) / 3),
    ("seq-mean-token-sum-norm", (6 + 4 + 4) / (3 * 4)),  # Dr.GRPO constant L = 4
])
def test_modes_by_hand(mode, expected):
    assert float(aggregate(L, M, mode, _g(M))) == pytest.approx(expected)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("split", [[1, 2], [2, 1], [1, 1, 1]])
def test_split_contributions_sum_to_unsplit(mode, split):
    whole = aggregate(L, M, mode, _g(M))
    g, parts, s = _g(M), [], 0
    for k in split:
        parts.append(aggregate(L[s:s + k], M[s:s + k], mode, g))
        s += k
    assert float(sum(parts)) == pytest.approx(float(whole))


def test_modes_differ_in_length_bias():
    # token-mean gives the long sequence's tokens the same weight; seq-mean-token-mean down-weights them
    assert float(aggregate(L, M, "token-mean", _g(M))) != float(aggregate(L, M, "seq-mean-token-mean", _g(M)))


def test_unknown_mode_names_field():
    with pytest.raises(KeyError, match="algo.aggregation"):
        aggregate(L, M, "sum", _g(M))


def _rank(rank, world, port, mode, q):
    import torch.distributed as dist

    from trainers.distributed import all_sum

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    rows = [[0, 1], [2]][rank]  # uneven token counts per rank
    c = all_sum(local_counts(M[rows]))
    part = aggregate(L[rows], M[rows], mode, GlobalCounts(float(c[0]), float(c[1]), 4.0))
    total = all_sum(part.reshape(1))
    q.put((rank, float(total[0])))
    dist.destroy_process_group()


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_two_real_gloo_ranks_give_the_one_rank_scalar(mode):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, mode, q)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = dict(q.get(timeout=5) for _ in range(2))
    one = float(aggregate(L, M, mode, _g(M)))
    assert got[0] == pytest.approx(one) and got[1] == pytest.approx(one)
