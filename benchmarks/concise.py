"""Concise-reasoning methods side by side: every tiny recipe from the embedded base model, one table.

    python benchmarks/concise.py [--recipes tiny_grpo,tiny_dler,...] [--workdir runs/bench-concise] [--reuse]
                                 [--json PATH] [key=value ...]

Each recipe runs with its own hyperparameters (``recipes/<name>.yaml``) in its own process, one after another, and
is evaluated on the same held-out problems with the same per-problem seeds before and after training. The table
shows held-out accuracy and mean tokens before -> after, the length reduction, the accuracy change in points, LCPO's
length adherence (mean |n - N| / N on held-out targets), and each run's wall time. ``--reuse`` reads run folders a
previous invocation left in ``--workdir`` instead of training again.

``--recipes smol_dler`` runs the real-model recipe (SmolLM2-135M-Instruct on reasoning-gym's basic_arithmetic; about
25 minutes on 2 cores) the same way; it is not in the default list.

Every recipe starts from the same base build, except ``tiny_lcpo``: LCPO needs a model that reads a length
instruction at all, so it starts from that build with the instruction on half of its SFT prompts (and 4500 instead
of 3000 SFT steps; see ``recipes/tiny_lcpo.yaml``); its "before" columns are that model's.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = "tiny_grpo,tiny_dler,tiny_shorterbetter,tiny_hapo,tiny_decs,tiny_lcpo,tiny_ppo"


def run(recipe: str, out: Path, extra: list[str], reuse: bool) -> dict:
    if not (reuse and (out / "summary.json").exists()):
        cmd = [sys.executable, "launch.py", f"recipe={recipe}", f"run.output_dir={out}", "logging.wandb=false",
               "logging.progress=false", "trainer.eval_every=0", *extra]
        shutil.rmtree(out, ignore_errors=True)  # this benchmark's own folder: a fresh run
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit(f"{recipe} failed:\n{p.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    return {"recipe": recipe, "summary": summary, "first_eval": evals[0], "last_eval": evals[-1]}


def row(r: dict) -> dict:
    b, a = r["summary"]["before"], r["summary"]["after"]
    return {"method": r["recipe"].removeprefix("tiny_"), "acc_before": b["eval/acc"], "acc_after": a["eval/acc"],
            "len_before": b["eval/len_mean"], "len_after": a["eval/len_mean"],
            "reduction_pct": 100 * (1 - a["eval/len_mean"] / b["eval/len_mean"]),
            "acc_change_pts": 100 * (a["eval/acc"] - b["eval/acc"]), "target_err": r["last_eval"].get("eval/target_err"),
            "target_err_before": r["first_eval"].get("eval/target_err"), "wall_s": r["summary"]["totals"]["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default=DEFAULT)
    ap.add_argument("--workdir", default="runs/bench-concise")
    ap.add_argument("--reuse", action="store_true")
    ap.add_argument("--json", default="")
    args, extra = ap.parse_known_args()
    rows = [row(run(r, ROOT / args.workdir / r, extra, args.reuse)) for r in args.recipes.split(",")]
    print(f"\n{'method':14s}{'accuracy':>18s}{'mean tokens':>20s}{'length':>9s}{'acc':>8s}{'target':>10s}{'wall':>7s}")
    print(f"{'':14s}{'before -> after':>18s}{'before -> after':>20s}{'cut':>9s}{'pts':>8s}{'err':>10s}{'s':>7s}")
    for x in rows:
        err = f"{100 * x['target_err']:.0f}%" if x["target_err"] is not None else "-"
        if x["target_err_before"] is not None:
            err = f"{100 * x['target_err_before']:.0f}->{err}"
        print(f"{x['method']:14s}{x['acc_before']:>9.3f} -> {x['acc_after']:.3f}{x['len_before']:>11.1f} -> "
              f"{x['len_after']:>5.1f}{x['reduction_pct']:>8.0f}%{x['acc_change_pts']:>+8.1f}{err:>10s}"
              f"{x['wall_s']:>7.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
