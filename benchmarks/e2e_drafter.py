"""End-to-end effect of the adaptive drafter on an RL run, side by side in one invocation.

    python benchmarks/e2e_drafter.py [--recipe tiny_dler] [--steps 30] [--ranks 1] [--json PATH] [key=value ...]

Runs the recipe twice from the same base model and seed, ``drafter.enabled=true`` and ``=false`` (sequentially, each
in its own process), then prints seconds per RL step for each (median over steps after the first; the drafter's
warm start and training are included in the drafter run's wall time and listed separately), the ratio, where the
time goes (mean of every ``time/*`` phase), the acceptance statistics per step, and held-out accuracy and length
before/after for both, and whether the two runs learned the same thing step for step: with coupled speculative
sampling (``rollout.spec_sampling``, coupled on CPU) a seeded rollout is the same tokens with or without the drafter,
so the runs must agree exactly; with rejection sampling they agree in distribution only (within noise).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(recipe: str, steps: int, out: Path, drafter: bool, extra: list[str], ranks: int = 1) -> dict:
    # several ranks: DeepSpeed's launcher (gloo on CPU), as the README starts them
    head = [sys.executable] if ranks == 1 else [shutil.which("deepspeed") or "deepspeed", "--num_gpus", str(ranks)]
    cmd = [*head, "launch.py", f"recipe={recipe}", f"trainer.max_steps={steps}", f"run.output_dir={out}",
           f"drafter.enabled={str(drafter).lower()}", "logging.wandb=false", "logging.progress=false",
           "trainer.eval_every=0", *extra]
    shutil.rmtree(out, ignore_errors=True)  # this benchmark's own arm folder: a fresh run each time
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"metrics": metrics, "summary": json.loads((out / "summary.json").read_text())}


def _phases(metrics: list[dict]) -> dict:
    keys = sorted({k for m in metrics for k in m if k.startswith("time/")})
    return {k: statistics.fmean(m.get(k, 0.0) for m in metrics) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipe", default="tiny_dler")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--workdir", default="runs/bench-e2e-drafter")
    ap.add_argument("--json", default="")
    ap.add_argument("--ranks", type=int, default=1,
                    help="trainer ranks (> 1: `deepspeed --num_gpus N`; the drafter then trains in the rollout's idle "
                         "windows instead of for drafter.budget_s after the update)")
    args, extra = ap.parse_known_args()
    if args.ranks < 1:
        raise SystemExit(f"--ranks={args.ranks} must be >= 1")
    work = ROOT / args.workdir
    res = {name: _run(args.recipe, args.steps, work / name, name == "drafter", extra, args.ranks)
           for name in ("drafter", "plain")}
    step = {n: statistics.median(m["time/step_s"] for m in r["metrics"][1:]) for n, r in res.items()}
    wall = {n: r["summary"]["totals"]["wall_s"] for n, r in res.items()}
    print(f"\n{args.recipe}, {args.steps} steps, same seed, {args.ranks} rank{'s' * (args.ranks > 1)}")
    print(f"{'':28s}{'drafter on':>12s}{'drafter off':>12s}")
    print(f"{'s / RL step (median)':28s}{step['drafter']:>12.2f}{step['plain']:>12.2f}   ratio {step['plain'] / step['drafter']:.2f}x")
    print(f"{'run wall s (incl. warm start)':28s}{wall['drafter']:>12.0f}{wall['plain']:>12.0f}   ratio {wall['plain'] / wall['drafter']:.2f}x")
    dsum = res["drafter"]["summary"].get("drafter", {})
    warm = dsum.get("drafter/warmup_s", 0.0)
    split = ", ".join(f"{k} {dsum[f'drafter/warmup_{k}_s']:.1f}" for k in ("rollout", "features", "train")
                      if f"drafter/warmup_{k}_s" in dsum)
    print(f"{'drafter warm start s':28s}{warm:>12.1f}   ({split})")
    for key in ("eval/acc", "eval/len_mean"):
        b, a = (res["drafter"]["summary"][x][key] for x in ("before", "after"))
        bp, ap_ = (res["plain"]["summary"][x][key] for x in ("before", "after"))
        print(f"{key + ' before -> after':28s} {f'{b:.3f} -> {a:.3f}':>16s} {f'{bp:.3f} -> {ap_:.3f}':>16s}")
    keys = ("reward/mean", "len/mean", "acc/mean", "train/loss", "train/grad_norm")
    same = all(a[k] == b[k] for a, b in zip(res["drafter"]["metrics"], res["plain"]["metrics"]) for k in keys)
    print(f"{'same learning step by step':28s}{str(same):>12s}   ({', '.join(keys)}; sampling "
          f"{dsum.get('sampling', '?')})")
    print("\nwhere the time goes (mean s per step):")
    ph = {n: _phases(r["metrics"]) for n, r in res.items()}
    for k in sorted(set(ph["drafter"]) | set(ph["plain"])):
        print(f"  {k:24s}{ph['drafter'].get(k, 0.0):>10.2f}{ph['plain'].get(k, 0.0):>10.2f}")
    print("\nacceptance per step (drafter run): step, mean accept len, speculation on-fraction, drafter top-1")
    for m in res["drafter"]["metrics"]:
        print(f"  {m['step']:>3d} {m.get('spec/mean_accept_len', 0):6.2f} {m.get('spec/enabled_frac', 0):6.2f} "
              f"{m.get('drafter/top1', 0):6.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"step_s": step, "wall_s": wall, "phases": ph, "warmup_s": warm,
                                               "summaries": {n: r["summary"] for n, r in res.items()},
                                               "accept": [m.get("spec/mean_accept_len") for m in
                                                          res["drafter"]["metrics"]]}, indent=2))


if __name__ == "__main__":
    main()
