"""Peak memory and time of chunked vs. naive log-probs + entropy, forward and backward, side by side.

    python benchmarks/logprob_memory.py [--tokens 1024] [--hidden 512] [--vocabs 32000 150000] [--chunk N]
                                        [--repeats 3] [--device cpu|cuda] [--dtype fp32|bf16] [--json PATH]

Both variants compute logprobs and entropy of ``tokens`` synthetic rows (hidden [N,H] ~ N(0,1), head [V,H] ~
N(0, 1/H)) and the gradients wrt hidden and head of ``sum(g1 * logp + g2 * entropy)``:
``naive`` is ``logprobs_from_hidden_reference`` (full [N,V] logits, autograd), ``chunked`` is
``logprobs_from_hidden`` (``backend="auto"``). Subprocesses run one after another. Memory: each (variant, vocab)
makes one cold call in a fresh process, measuring the peak above the inputs (CPU: peak RSS, VmHWM reset through
/proc/self/clear_refs; CUDA: ``torch.cuda.max_memory_allocated``); it counts every tensor the call creates,
gradients included (``dW`` is [V,H] in both variants). Time: one process per vocab alternates the two variants on
the same inputs for ``repeats`` rounds after a warm-up round (so a noisy neighbour slows both alike); medians.

Default sizes fit a 2-core / 24 GiB CPU: N=1024, H=512 in fp32 is ~0.6 GiB per [N,V] tensor at V=150k, so the naive
variant peaks near 3 GiB there (measured 2.9 GiB). Targets from the issue: chunked uses >= 4x less peak memory
at <= 1.2x the time.

Measured on the 2-core CPU (default chunk 128, another job on one core), chunked vs naive:
H=512:  V=32k 5.6x less memory, 0.98x time; V=150k 6.4x less, 0.94x time (targets met).
H=1024: V=32k 3.6x less, 1.25x time; V=150k 3.9x less, 1.16x time. Here dW ([V,H] fp32, held by both variants)
is as large as the naive [N,V] logits at N=1024, and the chunked path's fourth matmul (the backward recompute)
weighs more against the elementwise work it saves; more tokens per call raise the memory ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("naive", "chunked")


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


class _PeakMemory:
    """Peak bytes allocated above the level at ``start()``: CUDA allocator stats, or the process's peak RSS."""

    def __init__(self, device):
        self.device = device

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.base = _rss_kb("VmRSS") * 1024

    def peak(self) -> int:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _rss_kb("VmHWM") * 1024 - self.base


def _inputs(a: argparse.Namespace, vocab: int):
    """-> hidden [N,H], weight [V,H], ids [N], g_logp [N], g_ent [N] on the device, seeded."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    g = torch.Generator(device=a.device).manual_seed(0)
    hidden = torch.randn(a.tokens, a.hidden, generator=g, device=a.device, dtype=dtype).requires_grad_(True)
    weight = torch.randn(vocab, a.hidden, generator=g, device=a.device, dtype=dtype).mul_(a.hidden ** -0.5)
    ids = torch.randint(0, vocab, (a.tokens,), generator=g, device=a.device)
    g_lp, g_ent = torch.randn(2, a.tokens, generator=g, device=a.device).unbind(0)
    return hidden, weight.requires_grad_(True), ids, g_lp, g_ent


def _step(variant: str, a: argparse.Namespace, hidden, weight, ids, g_lp, g_ent) -> None:
    import torch

    from kernels import logprobs_from_hidden, logprobs_from_hidden_reference

    if variant == "naive":
        lp, ent = logprobs_from_hidden_reference(hidden, weight, ids, a.temperature)
    else:
        lp, ent = logprobs_from_hidden(hidden, weight, ids, a.temperature, chunk=a.chunk or None)
    grads = torch.autograd.grad((lp * g_lp).sum() + (ent * g_ent).sum(), [hidden, weight])
    del grads


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def memory_worker(a: argparse.Namespace) -> dict:
    """One cold call of ``a.variant`` in this (fresh) process -> peak bytes above the inputs."""
    import torch

    dev = torch.device(a.device)
    tensors = _inputs(a, a.vocab)
    mem = _PeakMemory(dev)
    mem.start()
    _step(a.variant, a, *tensors)
    return {"peak_bytes": mem.peak()}


def time_worker(a: argparse.Namespace) -> dict:
    """Both variants on the same inputs, alternating for ``repeats`` rounds after one warm-up each -> seconds."""
    import torch

    dev = torch.device(a.device)
    tensors = _inputs(a, a.vocab)
    times = {v: [] for v in VARIANTS}
    for r in range(a.repeats + 1):
        for v in VARIANTS:
            _sync(dev)
            t0 = time.perf_counter()
            _step(v, a, *tensors)
            _sync(dev)
            if r:
                times[v].append(time.perf_counter() - t0)
    return times


def _run_worker(a: argparse.Namespace, kind: str, vocab: int, variant: str = "naive") -> dict:
    argv = [sys.executable, __file__, "--worker", kind, "--variant", variant, "--vocab", str(vocab),
            "--tokens", str(a.tokens), "--hidden", str(a.hidden), "--chunk", str(a.chunk), "--repeats",
            str(a.repeats), "--device", a.device, "--dtype", a.dtype, "--temperature", str(a.temperature)]
    if a.threads:
        argv += ["--threads", str(a.threads)]
    p = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise RuntimeError(f"{kind} worker ({variant}, vocab {vocab}) failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _default_chunk(device: str) -> int:
    import torch

    from kernels.logprobs import default_chunk

    return default_chunk(torch.device(device))


def _table(rows: list[dict]) -> str:
    head = f"{'vocab':>7} {'naive MiB':>10} {'chunked MiB':>12} {'mem ratio':>10} {'naive s':>8} {'chunked s':>10} " \
           f"{'time ratio':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['vocab']:>7} {r['naive_peak_mib']:>10.0f} {r['chunked_peak_mib']:>12.0f} "
                     f"{r['mem_ratio']:>9.1f}x {r['naive_time_s']:>8.2f} {r['chunked_time_s']:>10.2f} "
                     f"{r['time_ratio']:>10.2f}x")
    return "\n".join(lines)


def compare(a: argparse.Namespace) -> list[dict]:
    """-> one row per vocab: peaks (MiB), median times (s), mem ratio naive/chunked, time ratio chunked/naive."""
    rows = []
    for vocab in a.vocabs:
        peak = {v: _run_worker(a, "memory", vocab, v)["peak_bytes"] for v in VARIANTS}
        times = _run_worker(a, "time", vocab)
        med = {v: statistics.median(times[v]) for v in VARIANTS}
        rows.append({"vocab": vocab, "naive_peak_mib": peak["naive"] / 2**20,
                     "chunked_peak_mib": peak["chunked"] / 2**20, "mem_ratio": peak["naive"] / peak["chunked"],
                     "naive_time_s": med["naive"], "chunked_time_s": med["chunked"],
                     "time_ratio": med["chunked"] / med["naive"], "naive_times_s": times["naive"],
                     "chunked_times_s": times["chunked"]})
    return rows


def _args(argv=None) -> argparse.Namespace:
    import torch

    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocabs", type=int, nargs="+", default=[32000, 150000])
    p.add_argument("--chunk", type=int, default=0, help="rows per chunk (0: the kernel's default for the device)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--worker", choices=["memory", "time"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, default="naive", help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    a = _args(argv)
    if a.worker:
        import torch

        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps({"memory": memory_worker, "time": time_worker}[a.worker](a)))
        return
    rows = compare(a)
    a.chunk = a.chunk or _default_chunk(a.device)
    print(f"log-probs + entropy, forward + backward: N={a.tokens} H={a.hidden} {a.dtype} on {a.device}, "
          f"chunk={a.chunk}, median of {a.repeats}; targets: mem ratio >= 4x, time ratio <= 1.2x")
    print(_table(rows))
    if a.json:
        a.json.write_text(json.dumps({"config": {k: v for k, v in vars(a).items() if k not in ("worker", "variant",
                                      "vocab", "json")}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
