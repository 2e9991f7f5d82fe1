"""Process-group setup shared by single-process and launcher runs, without importing DeepSpeed.

The ``deepspeed`` launcher sets RANK / WORLD_SIZE / MASTER_* and appends ``--local_rank=N``; a plain
``python launch.py`` run gets a one-rank group on a free local port (``deepspeed.init_distributed`` would go
looking for MPI there).
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(backend: str = "auto", local_rank: int | None = None) -> Dist:
    """Initialise (or join) the default process group and return this process's place in it."""
    if local_rank is not None:
        os.environ["LOCAL_RANK"] = str(local_rank)
    launched = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if not launched and not dist.is_initialized():  # a plain process (a stray RANK alone is no launcher)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK=os.environ.get("LOCAL_RANK", "0"),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    cuda = torch.cuda.is_available()
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    lr = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", lr) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        share_cpu_threads()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    else:  # joined a live group someone else made (e.g. a vLLM engine's): DeepSpeed reads this process's place
        os.environ.setdefault("RANK", str(dist.get_rank()))
        os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
        os.environ.setdefault("LOCAL_RANK", str(lr))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")  # DeepSpeed's env check; the group exists already
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    _forget_stale_deepspeed_groups()  # whoever made the live group (we, vLLM, accelerate), DeepSpeed must use it
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=lr, device=device)


def share_cpu_threads() -> int | None:
    """Several ranks on one CPU host: give each rank its share of the cores (``cores // local ranks``, at least 1)
    as its OpenMP team, as torchrun does and DeepSpeed's launcher does not (without ``--bind_cores_to_rank``). Each
    rank's team would otherwise be as wide as the host, for the trainer's ops and the in-process vLLM engine's CPU
    kernels alike, and every parallel region would wait for threads the other ranks' teams keep off the cores:
    measured, 2 ranks on 2 cores ran vLLM's matmul / attention / rotary kernels 30-300x slower than one rank, 10-26 s
    per tiny_grpo step against 4.2-5.2 s shared (same metrics bit for bit). Must run before the engine starts (vLLM's
    CPU worker then disables ``torch.set_num_threads``). An ``OMP_NUM_THREADS`` in the environment is the user's
    choice and is left alone. -> the threads set, or None when nothing was changed."""
    local = int(os.environ.get("LOCAL_SIZE") or os.environ.get("LOCAL_WORLD_SIZE") or 1)  # DeepSpeed / torchrun
    if local <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    threads = max(1, len(os.sched_getaffinity(0)) // local)
    torch.set_num_threads(threads)
    return threads


def _forget_stale_deepspeed_groups() -> None:
    """Drop DeepSpeed's cached sub-groups when they belong to a default group that is gone.

    vLLM's engine shutdown destroys the default process group with plain ``torch.distributed``, which does not
    tell DeepSpeed; a later ``deepspeed.initialize`` in the same process would then broadcast over a cached clone of
    the dead world group ("Group ... is not registered"). Only relevant when DeepSpeed is already imported.
    """
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    release = getattr(groups, "_release_process_group_references", None)
    if release is None:
        return
    from torch.distributed.distributed_c10d import _world

    names = ("_WORLD_GROUP", "_DATA_PARALLEL_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP")
    cached = [getattr(groups, n, None) for n in names]
    if any(g is not None and g not in _world.pg_group_ranks for g in cached):
        release(None)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (returns a new tensor; a no-op copy on one rank)."""
    out = t.clone()
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally shaped ``[B, ...]`` tensors from all ranks along dim 0, in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return t.clone()
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, 0)


def gather_objects(obj) -> list:
    """All ranks' picklable objects, in rank order."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
