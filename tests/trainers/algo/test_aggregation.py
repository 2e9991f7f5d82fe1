"""Aggregation modes by hand, and the same scalar however the batch is split over ranks or micro-batches."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from trainers.algo.aggregation import AGGREGATIONS, GlobalCounts, aggregate, local_counts


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
@pytest.mark.unit
def test_modes_by_hand(mode, expected):
    assert float(aggregate(L, M, mode, _g(M))) == pytest.approx(expected)


@pytest.mark.unit
@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize("split", [[1, 2], [2, 1], [1, 1, 1]])
def test_split_contributions_sum_to_unsplit(mode, split):
    whole = aggregate(L, M, mode, _g(M))
    g, parts, s = _g(M), [], 0
    for k in split:
        parts.append(aggregate(L[s:s + k], M[s:s + k], mode, g))
        s += k
    assert float(sum(parts)) == pytest.approx(float(whole))


@pytest.mark.unit
def test_modes_differ_in_length_bias():
    # token-mean gives the long sequence's tokens the same weight; seq-mean-token-mean down-weights them
    assert float(aggregate(L, M, "token-mean", _g(M))) != float(aggregate(L, M, "seq-mean-token-mean", _g(M)))


@pytest.mark.unit
def test_unknown_mode_names_field():
    with pytest.raises(KeyError, match="algo.aggregation"):
        aggregate(L, M, "sum", _g(M))


def _rank(rank, world, port, mode, q):
    import torch.distributed as dist

    from trainers.backend.distributed import all_sum

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


@pytest.mark.unit
@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_length_sorted_micro_batches_sum_to_unsplit(mode):
    # the updater cuts micro-batches from a by-length order of the mini-batch: any partition sums to the whole
    whole, g = aggregate(L, M, mode, _g(M)), _g(M)
    order = torch.tensor([2, 0, 1])
    parts = [aggregate(L[order[s:s + 2]], M[order[s:s + 2]], mode, g) for s in (0, 2)]
    assert float(sum(parts)) == pytest.approx(float(whole))


@pytest.mark.unit
def test_by_length_order_and_map_restores_row_order():
    from types import SimpleNamespace

    from trainers.update import Rows, Updater

    lens = [5, 1, 3, 1, 4]
    ids = torch.arange(1, 6)[:, None].expand(5, 6).clone()  # row i holds the value i+1
    mask = torch.arange(6)[None, :] < torch.tensor(lens)[:, None]
    rows = Rows([[7, 7]] * 5, ids, mask, None)
    assert rows.by_length().tolist() == [1, 3, 2, 4, 0]  # stable: the two length-1 rows keep their order
    assert rows.by_length(2, 5).tolist() == [3, 2, 4]
    seen = []

    def fn(r: Rows) -> torch.Tensor:  # a micro-batch's rows, padded only to its own longest
        seen.append(r.completion_ids[:, 0].tolist())
        return (r.completion_ids * r.mask)[:, :int(r.mask.sum(-1).max())].float()

    me = SimpleNamespace(cfg=SimpleNamespace(trainer=SimpleNamespace(micro_batch_size=2)))
    out = Updater._map(me, rows, fn)
    assert seen == [[2, 4], [3, 5], [1]]  # similar lengths together
    assert torch.equal(out, (ids * mask).float())  # back in the rows' order, padded to the batch width
