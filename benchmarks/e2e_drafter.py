"""End-to-end effect of the drafter on an RL run: both arms in one invocation, interleaved so host drift hits both.

    python benchmarks/e2e_drafter.py [--recipe tiny_dler] [--steps 30] [--chunks 3] [--ranks 1] [--json PATH]
                                     [key=value ...]

Runs the recipe twice from the same base model and seed, ``drafter.enabled=true`` ("drafter") and ``=false``
("plain"), each in its own run folder, in ``--chunks`` chunks of steps: every chunk is one process per arm that stops
after the chunk's last step with a checkpoint (``trainer.stop_at``) and is resumed by the next (``run.resume=auto``;
resuming is exact). The arms alternate A-B-B-A-A-B...: a machine that slows down over the invocation slows both arms
alike. Its check: the policy update is identical work in both arms (same rows, same weights: the runs learn the same
thing), so its time per chunk, drafter arm over plain arm, must stay near 1.0; it is printed as the drift check.

Printed, per arm: seconds per RL step (median over every step but the first) and the ratio; the whole run (the
run's own wall time over all chunks: warm start, steps, evaluations, final drafter fit; plus one engine start) and
the ratio; the regime (the rollout's share of the step, the share of the engines' step time spent with <= 8 / <= 32
requests in an engine, completion-length median / p99 / max); where the time goes (mean of every ``time/*`` phase);
acceptance per step; held-out accuracy and length before/after; and whether the two runs learned the same thing
step for step: with coupled speculative sampling (``rollout.spec_sampling``, coupled on CPU) a seeded rollout is the
same tokens with or without the drafter, so the runs must agree exactly; with rejection sampling they agree in
distribution only. ``--json`` writes ``recipe, ranks, per_step_ratio, whole_run_ratio, rollout_share,
same_learning`` and the rest.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("drafter", "plain")
SAME_KEYS = ("reward/mean", "len/mean", "acc/mean", "train/loss", "train/grad_norm")


def chunk_ends(steps: int, chunks: int) -> list[int]:
    """Last step of each chunk: ``chunks`` near-equal chunks of ``steps`` (at least one step each)."""
    chunks = max(1, min(chunks, steps))
    return [round(steps * (i + 1) / chunks) for i in range(chunks)]


def order(chunk: int) -> tuple[str, str]:
    """A-B-B-A-A-B...: the arm that ran second in a chunk runs first in the next."""
    return ARMS if chunk % 2 == 0 else ARMS[::-1]


def _run_chunk(recipe: str, steps: int, end: int, first: bool, out: Path, drafter: bool, extra: list[str],
               ranks: int) -> float:
    """One chunk of one arm (-> the process's wall seconds); several ranks: DeepSpeed's launcher (gloo on CPU)."""
    head = [sys.executable] if ranks == 1 else [shutil.which("deepspeed") or "deepspeed", "--num_gpus", str(ranks)]
    cmd = [*head, "launch.py", f"recipe={recipe}", f"trainer.max_steps={steps}", f"run.output_dir={out}",
           f"trainer.stop_at={0 if end == steps else end}", f"drafter.enabled={str(drafter).lower()}",
           "logging.wandb=false", "logging.progress=false", "trainer.eval_every=0", "trainer.save_every=0", *extra]
    if first:
        shutil.rmtree(out, ignore_errors=True)  # this benchmark's own arm folder: a fresh run
    else:
        cmd.append("run.resume=auto")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return time.perf_counter() - t0


def _phases(metrics: list[dict]) -> dict:
    keys = sorted({k for m in metrics for k in m if k.startswith("time/")})
    return {k: statistics.fmean(m.get(k, 0.0) for m in metrics) for k in keys}


def regime(metrics: list[dict]) -> dict:
    """The rollout's share of the step (median over steps) and the share of engine-step time with <= 8 / <= 32
    requests in an engine (over the whole run), and completion lengths (mean over steps of each step's statistic)."""
    out = {"rollout_share": statistics.median(m["time/rollout_s"] / m["time/step_s"] for m in metrics)}
    engine = sum(m.get("rollout/engine_s", 0.0) for m in metrics)
    for n in (8, 32):
        key = f"rollout/batch_le{n}_frac"
        out[f"batch_le{n}_share"] = (sum(m.get(key, 0.0) * m.get("rollout/engine_s", 0.0) for m in metrics) / engine
                                     if engine else None)
    for key in ("len/median", "len/p99", "len/max"):
        if all(key in m for m in metrics):
            out[key.split("/")[1]] = statistics.fmean(m[key] for m in metrics)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="tiny_dler")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--chunks", type=int, default=3, help="interleaved chunks per arm (A-B-B-A-...); 1 = one "
                    "process per arm, run one after the other")
    ap.add_argument("--workdir", default="runs/bench-e2e-drafter")
    ap.add_argument("--json", default="")
    ap.add_argument("--ranks", type=int, default=1,
                    help="trainer ranks (> 1: `deepspeed --num_gpus N`; the drafter then trains in the rollout's idle "
                         "windows instead of for drafter.budget_s after the update)")
    args, extra = ap.parse_known_args()
    if args.ranks < 1 or args.steps < 2 or args.chunks < 1:
        raise SystemExit(f"--ranks={args.ranks} must be >= 1, --steps={args.steps} >= 2, --chunks={args.chunks} >= 1")
    work = ROOT / args.workdir
    ends = chunk_ends(args.steps, args.chunks)
    proc_s = {a: [] for a in ARMS}
    for i, end in enumerate(ends):
        for arm in order(i):
            proc_s[arm].append(_run_chunk(args.recipe, args.steps, end, i == 0, work / arm, arm == "drafter", extra,
                                          args.ranks))
            print(f"chunk {i + 1}/{len(ends)} (steps <= {end}) {arm}: {proc_s[arm][-1]:.0f} s", flush=True)
    metrics = {a: [json.loads(x) for x in (work / a / "metrics.jsonl").read_text().splitlines()] for a in ARMS}
    summary = {a: json.loads((work / a / "summary.json").read_text()) for a in ARMS}
    for a in ARMS:
        if [m["step"] for m in metrics[a]] != list(range(1, args.steps + 1)):
            raise SystemExit(f"{work / a / 'metrics.jsonl'}: steps {[m['step'] for m in metrics[a]]}, expected "
                             f"1..{args.steps}")
    step = {a: statistics.median(m["time/step_s"] for m in metrics[a][1:]) for a in ARMS}
    wall = {a: summary[a]["totals"]["wall_s"] + summary[a]["totals"]["engine_start_s"] for a in ARMS}
    reg = {a: regime(metrics[a]) for a in ARMS}
    bounds = [0, *ends]
    drift = [statistics.fmean(m["time/update_s"] for m in metrics["drafter"][lo:hi])
             / statistics.fmean(m["time/update_s"] for m in metrics["plain"][lo:hi])
             for lo, hi in zip(bounds, bounds[1:])]
    same = all(a[k] == b[k] for a, b in zip(metrics["drafter"], metrics["plain"]) for k in SAME_KEYS)
    dsum = summary["drafter"].get("drafter", {})
    warm = dsum.get("drafter/warmup_s", 0.0)
    final_fit = dsum.get("drafter/final_s", 0.0)
    per_step, whole = step["plain"] / step["drafter"], wall["plain"] / wall["drafter"]

    print(f"\n{args.recipe}, {args.steps} steps in {len(ends)} interleaved chunk(s), same seed, "
          f"{args.ranks} rank{'s' * (args.ranks > 1)}")
    print(f"{'':34s}{'drafter on':>12s}{'drafter off':>12s}")
    print(f"{'s / RL step (median)':34s}{step['drafter']:>12.2f}{step['plain']:>12.2f}   ratio {per_step:.2f}x")
    print(f"{'whole run s (incl. warm start)':34s}{wall['drafter']:>12.0f}{wall['plain']:>12.0f}   ratio {whole:.2f}x")
    print(f"{'  processes, every chunk s':34s}{sum(proc_s['drafter']):>12.0f}{sum(proc_s['plain']):>12.0f}")
    split = ", ".join(f"{k} {dsum[f'drafter/warmup_{k}_s']:.1f}" for k in ("rollout", "features", "train")
                      if f"drafter/warmup_{k}_s" in dsum)
    print(f"{'drafter warm start s':34s}{warm:>12.1f}   ({split or dsum.get('init', 'none')})")
    print(f"{'drafter final fit s':34s}{final_fit:>12.1f}")
    print(f"{'rollout share of the step':34s}{reg['drafter']['rollout_share']:>12.2f}{reg['plain']['rollout_share']:>12.2f}")
    for n in (8, 32):
        k = f"batch_le{n}_share"
        if reg["plain"][k] is not None:
            print(f"{f'engine time at batch <= {n}':34s}{reg['drafter'][k]:>12.2f}{reg['plain'][k]:>12.2f}")
    for k in ("median", "p99", "max"):
        if k in reg["plain"]:
            print(f"{f'completion tokens {k} (mean/step)':34s}{reg['drafter'][k]:>12.1f}{reg['plain'][k]:>12.1f}")
    print(f"{'drift check (update s, on / off)':34s}" + " ".join(f"{r:.2f}" for r in drift))
    for key in ("eval/acc", "eval/len_mean"):
        b, a = (summary["drafter"][x][key] for x in ("before", "after"))
        bp, ap_ = (summary["plain"][x][key] for x in ("before", "after"))
        print(f"{key + ' before -> after':34s} {f'{b:.3f} -> {a:.3f}':>16s} {f'{bp:.3f} -> {ap_:.3f}':>16s}")
    print(f"{'same learning step by step':34s}{str(same):>12s}   ({', '.join(SAME_KEYS)}; sampling "
          f"{dsum.get('sampling', '?')})")
    print("\nwhere the time goes (mean s per step):")
    ph = {a: _phases(metrics[a]) for a in ARMS}
    for k in sorted(set(ph["drafter"]) | set(ph["plain"])):
        print(f"  {k:32s}{ph['drafter'].get(k, 0.0):>10.2f}{ph['plain'].get(k, 0.0):>10.2f}")
    print("\nper step (drafter run): step, s on, s off, mean accept len, speculation on-fraction, drafter top-1")
    for m, p in zip(metrics["drafter"], metrics["plain"]):
        print(f"  {m['step']:>3d} {m['time/step_s']:7.2f} {p['time/step_s']:7.2f} {m.get('spec/mean_accept_len', 0):6.2f}"
              f" {m.get('spec/enabled_frac', 0):6.2f} {m.get('drafter/top1', 0):6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "recipe": args.recipe, "ranks": args.ranks, "steps": args.steps, "chunks": len(ends),
            "per_step_ratio": per_step, "whole_run_ratio": whole,
            "rollout_share": {a: reg[a]["rollout_share"] for a in ARMS}, "same_learning": same,
            "regime": reg, "step_s": step, "wall_s": wall, "process_s": proc_s, "drift_check": drift,
            "phases": ph, "warmup_s": warm, "final_fit_s": final_fit,
            "summaries": summary, "accept": [m.get("spec/mean_accept_len") for m in metrics["drafter"]]}, indent=2))


if __name__ == "__main__":
    main()
