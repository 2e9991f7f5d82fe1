"""Process-group setup: several ranks on one CPU host share its cores instead of each spanning all of them."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PROBE = ("import torch; from trainers.backend.distributed import share_cpu_threads; "
         "before = torch.get_num_threads(); set_ = share_cpu_threads(); print(before, set_, torch.get_num_threads())")


def _probe(**env) -> tuple[int, str, int]:
    """``share_cpu_threads()`` in a fresh interpreter (a vLLM engine of an earlier test disables
    ``torch.set_num_threads`` in this one) -> (threads before, its return value, threads after)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("LOCAL_SIZE", "LOCAL_WORLD_SIZE", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=clean | env, capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]), out[1], int(out[2])


@pytest.mark.parametrize("var", ["LOCAL_SIZE", "LOCAL_WORLD_SIZE"])  # DeepSpeed's launcher, torchrun
def test_each_local_rank_gets_its_share_of_the_cores(var):
    cores = len(os.sched_getaffinity(0))
    _, ret, after = _probe(**{var: "2"})
    assert ret == str(after) and after == max(1, cores // 2)
    _, ret, after = _probe(**{var: str(4 * cores)})  # more ranks than cores: one thread each, never zero
    assert ret == "1" and after == 1


def test_one_rank_and_a_users_omp_num_threads_are_left_alone():
    cores = len(os.sched_getaffinity(0))
    before, ret, after = _probe()
    assert ret == "None" and after == before
    before, ret, after = _probe(LOCAL_SIZE="2", OMP_NUM_THREADS=str(cores))
    assert ret == "None" and after == before == cores
