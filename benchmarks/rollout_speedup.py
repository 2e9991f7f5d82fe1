"""Rollout speed with and without the online-trained drafter, side by side in one run.

    python benchmarks/rollout_speedup.py [--run RUN_FOLDER] [--prompts 64] [--batch-sizes 1,4,16,64] [--compiled]
                                         [--n 8] [--lookup] [--blend] [--lookup-history] [--json PATH]

One policy checkpoint (``--run``: the run's exported policy and its drafter, on the run's own held-out prompts, in its
chat template for a real model such as ``smol_dler``'s; default: the embedded base model and a drafter with the
flagship's (``tiny_dler``) settings warm-started on its own rollouts exactly as the trainer does before RL step 1),
the same held-out prompts, temperature 1 (``--temperature``), per-request seeds. For every batch size b the prompts
are generated in consecutive calls of b prompts (repeated with fresh seeds until there are ``--min-calls`` calls: a
large-batch call lasts as long as its longest completion, so one call is one noisy sample), alternating call by
call between an engine without speculation and one with the drafter (adaptive K per batch size, the trainer's
default), so machine noise hits both alike. Before measuring a batch size, one uncounted call warms the engine
without speculation at that size (an engine's first call pays one-time costs), and calibration calls let the
speculation controller learn its goodput table until it has measured every K there (the trainer's engines learn it
during the first rollouts the same way, and keep it in their checkpoints); right before, because the controller's
acceptance is pooled over batch sizes and the long stragglers that finish a large-batch call draft worse than fresh
requests (seen: after the batch-64 calibration, K = 1 chosen at batch 4 and 1.25x there). Prints tokens/s for both,
the ratio, the mean acceptance length, the K the controller settled on and the calibration calls it took;
``--json PATH`` writes the same numbers. ``--compiled`` builds both engines with ``enforce_eager=False`` (vLLM's
torch.compile of target and drafter, ~15 s more per engine start) instead of the project's eager default: plain
decoding gains more from it than speculation does, so the ratio is lower there (benchmarks/README.md). ``--lookup``
adds a third engine drafting by lookup alone (no trained head: ``drafter.method=lookup``), measured in the same
alternation, and ``--blend`` one with the drafter and lookup drafts beside it (``rollout.lookup_blend``: per request,
the draft measured to emit more); ``--n 8`` makes each call GRPO-shaped (8 samples of each prompt, the siblings a
lookup drafts from).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the rooms, when run as `python benchmarks/rollout_speedup.py`


def _load(args):
    """-> (policy folder, drafter export or None to warm one, held-out rows, the run's config or None)."""
    from recipes.tasks import arith

    from drafters.types import DrafterExport

    run_cfg = None
    if args.run:
        run = Path(args.run)
        model, drafter_dir = run / "export", run / "export" / "drafter"
        if not (model / "config.json").exists() or not (drafter_dir / "config.json").exists():
            raise SystemExit(f"--run {run}: needs export/ with export/drafter/ (a run with drafter.enabled=true)")
        dcfg = json.loads((drafter_dir / "config.json").read_text())
        k = args.k or dcfg.get("laconic_num_speculative_tokens", 4)
        drafter = DrafterExport(dcfg.get("laconic_drafter", "eagle"), k, str(drafter_dir), 1)
        from recipes.loader import load

        run_cfg = load(str(run / "config.yaml"), [])[0]
        if run_cfg.data.task != "arith" or run_cfg.data.eval_task or run_cfg.data.eval_file:
            from recipes.tasks.data import load_task

            rows = load_task(replace(run_cfg.data, n_eval=max(args.prompts, run_cfg.data.n_eval))).eval
            return str(model), drafter, rows[:args.prompts], run_cfg
    else:
        from recipes.tasks.base_model import ensure_base_model

        model, drafter = ensure_base_model(), None
    _, held_out = arith.make_splits(args.seed, 16, args.prompts)
    return str(model), drafter, held_out, run_cfg


def _warm_drafter(model_dir: str, engine, prompts, args):
    """The trainer's warm start, outside the trainer: base rollouts -> trainer features -> drafter steps."""
    import torch
    from transformers import AutoModelForCausalLM

    from drafters.online import OnlineDrafter
    from recipes.loader import load
    from rollout.types import SamplingSpec
    from trainers.drafting import fit_on_rollouts

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    flagship = load("tiny_dler", [])[0].drafter  # the flagship's drafter settings (learning rate, loss weights)
    dcfg = replace(flagship, enabled=True, num_speculative_tokens=args.k or flagship.num_speculative_tokens,
                   max_rows_per_step=512,
                   train_depth=args.train_depth or flagship.train_depth)
    drafter = OnlineDrafter(dcfg, cfg, model.get_input_embeddings().weight, model.get_output_embeddings().weight, 1.0)
    batch = engine.generate(prompts, SamplingSpec(n=8, max_tokens=args.max_tokens, temperature=args.temperature,
                                                  seed=args.seed))
    t0 = time.perf_counter()
    stats = fit_on_rollouts(drafter, model, batch, steps=args.warm_steps)
    print(f"drafter warm start: {len(prompts)} prompts x 8, {stats.steps} steps in {time.perf_counter() - t0:.0f} s, "
          f"top-1 agreement {stats.top1_agreement:.3f}")
    return drafter.export(Path(args.workdir) / "drafter")


def _calls(prompts, b: int, args, passes: int, pass0: int = 0):
    """-> [(prompts of the call, its SamplingSpec)]: calls of b requests, ``min(--n, b)`` samples of each prompt
    (GRPO's siblings when --n > 1), every prompt once per pass with a fresh seed each pass."""
    from rollout.types import SamplingSpec

    n = min(args.n, b)
    per = max(1, b // n)
    out = []
    for p, s in itertools.product(range(pass0, pass0 + passes), range(0, len(prompts), per)):
        out.append((prompts[s:s + per], SamplingSpec(n=n, max_tokens=args.max_tokens, temperature=args.temperature,
                                                     seed=args.seed * 1000 + s + 10**6 * p)))
    return out


def _measure(plain, arms: dict, prompts, b: int, args, min_calls: int = 1) -> dict:
    """Calls of b requests made alternately on the plain engine and each speculating engine of ``arms`` (name ->
    engine). -> the row: plain tokens/s, and per arm its tokens/s, ratio, acceptance, K and controller estimate."""
    tot = {name: [0.0, 0] for name in ["plain", *arms]}
    counts = {name: [0, 0, 0.0, 0] for name in arms}  # drafts, accepted, enabled fraction summed, calls
    per_pos0 = {name: _per_position(eng) for name, eng in arms.items()}
    passes = max(1, -(-min_calls * b // (len(prompts) * min(args.n, b))))
    for chunk, sample in _calls(prompts, b, args, passes):
        for name, eng in (("plain", plain), *arms.items()):
            t0 = time.perf_counter()
            out = eng.generate(chunk, sample)
            tot[name][0] += time.perf_counter() - t0
            tot[name][1] += int(out.num_tokens.sum())
            if name in arms:
                c = counts[name]
                c[0], c[1], c[2], c[3] = (c[0] + out.spec.drafts, c[1] + out.spec.accepted_tokens,
                                          c[2] + out.spec.enabled_frac, c[3] + 1)
    tp = tot["plain"][1] / tot["plain"][0]
    row = {"batch": b, "plain_tok_s": tp}
    for name, eng in arms.items():
        drafts, accepted, enabled, calls = counts[name]
        ts = tot[name][1] / tot[name][0]
        per_pos = [(a - z) / drafts if drafts else 0.0 for a, z in zip(_per_position(eng), per_pos0[name])]
        bucket = eng.controller.bucket(b)
        pre = "" if name == "spec" else f"{name}_"
        row |= {f"{pre}spec_tok_s": ts, f"{pre}ratio": ts / tp,
                f"{pre}mean_accept_len": 1 + accepted / drafts if drafts else 0.0,
                f"{pre}spec_enabled_frac": enabled / calls, f"{pre}chosen_k": eng.controller.effective(bucket),
                f"{pre}tokens": tot[name][1],
                f"{pre}controller_estimate": eng.controller.speedups().get(bucket, 1.0),
                f"{pre}accept_per_position": per_pos}
    return row


def _calibrate(spec, prompts, b: int, args, max_passes: int = 4) -> int:
    """Speculating calls of b prompts until the controller has measured every K at this batch size (its bucket is
    settled, as a trainer's engine is after its first rollouts) -- at most ``max_passes`` passes over the prompts.
    -> calls made. Measuring while it still explores every 8th step would count its learning (15% of the steps
    off the chosen K at batch 4) as the steady state."""
    calls = 0
    for chunk, sample in _calls(prompts, b, args, max_passes, pass0=100):
        if calls and spec.controller.settled(b):
            break
        spec.generate(chunk, sample)
        calls += 1
    return calls


def _warm(plain, prompts, b: int, args) -> None:
    """One uncounted call of b prompts on the engine without speculation, as calibration is for the other: an
    engine's first generate call pays one-time costs (measured: its first forward 1.5 s, later prefills 8 ms), which
    would otherwise land in the first batch size's plain time and inflate that ratio."""
    chunk, sample = _calls(prompts, b, args, 1, pass0=99)[0]
    plain.generate(chunk, sample)


def _per_position(engine) -> list[int]:
    """vLLM's cumulative accepted-token counts per draft position (summed by the engine's step meter)."""
    return list(engine.meter.accepted_per_pos)


def _table(rows: list[dict], pre: str, title: str) -> None:
    """One arm's rows (keys prefixed ``pre``) beside plain decoding."""
    print(f"{'batch':>6} {'no spec tok/s':>14} {title + ' tok/s':>14} {'ratio':>7} {'est.':>6} {'accept len':>11} "
          f"{'K':>3} {'calib':>5}  acceptance per draft position")
    for r in rows:
        pos = " ".join(f"{x:.2f}" for x in r[f"{pre}accept_per_position"])
        print(f"{r['batch']:>6} {r['plain_tok_s']:>14.1f} {r[f'{pre}spec_tok_s']:>14.1f} {r[f'{pre}ratio']:>6.2f}x "
              f"{r[f'{pre}controller_estimate']:>5.2f}x {r[f'{pre}mean_accept_len']:>11.2f} {r[f'{pre}chosen_k']:>3} "
              f"{r[f'{pre}calibration_calls']:>5}  {pos}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="", help="run folder whose export/ and export/drafter/ to use")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,4,16,64")
    ap.add_argument("--max-tokens", type=int, default=400)
    ap.add_argument("--min-calls", type=int, default=16,
                    help="generate calls per batch size at least (more passes over the prompts, fresh seeds): at "
                         "batch 64 one call's time is its slowest request's, so a single call is one noisy sample")
    ap.add_argument("--k", type=int, default=0,
                    help="most speculative tokens per round (0 = the run's export, or the flagship's)")
    ap.add_argument("--warm-steps", type=int, default=400)
    ap.add_argument("--train-depth", type=int, default=0,
                    help="drafter.train_depth of the warm-started drafter (0 = the flagship's; 1 = teacher-forced only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--temperature-from-run", action="store_true",
                    help="with --run: sample at the run's rollout.temperature instead of --temperature")
    ap.add_argument("--workdir", default="runs/bench-rollout-speedup")
    ap.add_argument("--compiled", action="store_true",
                    help="both engines with rollout.enforce_eager=false (torch.compile) instead of the eager default")
    ap.add_argument("--n", type=int, default=1,
                    help="samples of each prompt in a call (GRPO's group: siblings a lookup drafts from); a call of b "
                         "requests holds b / min(n, b) prompts")
    ap.add_argument("--lookup", action="store_true",
                    help="a third engine drafting by lookup alone (drafter.method=lookup: no trained head), beside")
    ap.add_argument("--lookup-history", action="store_true",
                    help="the lookup engine also drafts from earlier calls' completions of the same prompt (the "
                         "benchmark repeats its prompts, which would flatter it; an RL run sees a prompt again only "
                         "in a later epoch); default: its own text and its call's siblings only")
    ap.add_argument("--blend", action="store_true",
                    help="another engine: the drafter with lookup drafts beside it, per request where measured better "
                         "(rollout.lookup_blend), in the same alternation")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from transformers import AutoTokenizer

    from rollout.config import RolloutConfig
    from rollout.types import Prompt
    from rollout.vllm_engine import VLLMEngine

    model_dir, drafter, rows, run_cfg = _load(args)
    tok = AutoTokenizer.from_pretrained(model_dir)
    if run_cfg is not None and run_cfg.data.chat_template:  # a real model's run: its prompts as it trained on them
        from trainers.data import to_prompts

        prompts = to_prompts(rows, tok, run_cfg.data)
    else:
        prompts = [Prompt(r["uid"], tok(r["prompt"], add_special_tokens=False)["input_ids"], {"answer": r["answer"]})
                   for r in rows]
    if run_cfg is not None and args.temperature_from_run:
        args.temperature = run_cfg.rollout.temperature
    max_len = max(512, max(len(p.token_ids) for p in prompts) + args.max_tokens + 8)
    rc = RolloutConfig(max_tokens=args.max_tokens, max_model_len=max_len, kv_cache_memory_bytes=256 * 2**20,
                       enforce_eager=not args.compiled)
    plain = VLLMEngine(model_dir, rc, seed=args.seed)
    if drafter is None:
        drafter = _warm_drafter(model_dir, plain, prompts, args)
    arms = {"spec": VLLMEngine(model_dir, rc, seed=args.seed, drafter=drafter)}
    if args.lookup:
        from drafters.types import DrafterExport

        arms["lookup"] = VLLMEngine(model_dir, replace(rc, lookup_history=args.lookup_history), seed=args.seed,
                                    drafter=DrafterExport("lookup", drafter.num_speculative_tokens, "", 0))
    if args.blend:
        arms["blend"] = VLLMEngine(model_dir, replace(rc, lookup_history=args.lookup_history, lookup_blend=True),
                                   seed=args.seed, drafter=drafter)
    spec = arms["spec"]
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    rows_out = []
    for b in sizes:  # calibrate right before measuring: a batch size's tails would skew the next one's acceptance
        calls = {name: _calibrate(eng, prompts, b, args) for name, eng in arms.items()}
        _warm(plain, prompts, b, args)
        row = _measure(plain, arms, prompts, b, args, args.min_calls)
        rows_out.append(row | {("" if name == "spec" else f"{name}_") + "calibration_calls": c
                               for name, c in calls.items()})
    print(f"\nmodel {model_dir} | drafter {drafter.path} | lossless guard: {spec.lossless} | "
          f"{len(prompts)} prompts x {args.n} per call, T={args.temperature:g}, max {args.max_tokens} tokens, "
          f"{'compiled' if args.compiled else 'eager'} engines")
    _table(rows_out, "", "drafter")
    print("est.: the speculation controller's own decode-step goodput estimate for that batch size (a training "
          "run keeps it in summary.json as drafter.speedup_by_batch), beside the measured ratio")
    if args.lookup:
        print(f"\nlookup drafts alone (no trained head; history of earlier calls: {args.lookup_history})")
        _table(rows_out, "lookup_", "lookup")
    if args.blend:
        print(f"\nthe drafter with lookup drafts beside it (rollout.lookup_blend; history: {args.lookup_history})")
        _table(rows_out, "blend_", "blend")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model_dir, "drafter": drafter.path, "n": args.n,
                                               "compiled": args.compiled, "lookup": args.lookup, "blend": args.blend,
                                               "lookup_history": args.lookup_history, "rows": rows_out}, indent=2))


if __name__ == "__main__":
    main()
