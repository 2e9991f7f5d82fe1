"""``launch.py export`` and ``launch.py eval``: a run's model out into the world, and any model measured the way
the trainer measures it.

    python launch.py export run=RUN [step=N] [out=DIR] [overwrite=true] [push_to_hub=true repo_id=USER/NAME]
    python launch.py eval model=MODEL [step=N] [data=TASK|FILE] [samples=K] [max_tokens=N] [out=DIR]
                          [compare=MODEL,MODEL,...] [section.key=value ...]

Arguments are ``key=value``; an unknown key fails at once, naming the closest one. Everything that can be wrong
with a path (run folder, checkpoint step, model folder, data file) is checked before vLLM or a model is loaded.

``eval`` uses the trainer's own evaluation (:func:`trainers.evaluation.evaluate`: per-problem seeds, pass@1 over k
samples, the same verifier) under the config of the run the model came from (or the embedded default recipe for a
plain HF folder), so its numbers compare with the run's own. Dotted keys override that config
(``eval.temperature=0``, ``rollout.max_model_len=4096``, ``data.n_eval=64``, ...). ``launch.py`` loads that config
and the held-out rows (recipes/ is above this room) and hands them to :func:`evaluate_models`.
"""
from __future__ import annotations

import difflib
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from trainers.cli.export import ExportError, export_source, is_hf_model


class CommandError(ValueError):
    """A bad argument or path, found before anything heavy was loaded."""


@dataclass
class ExportArgs:
    run: str = ""  # run folder (required)
    step: int = -1  # checkpoint to export; -1 = the run's final policy (its export/)
    out: str = ""  # output folder; "" = <run>/export (final: card refreshed in place) or <run>/export_step_N
    overwrite: bool = False  # replace a non-empty out folder
    push_to_hub: bool = False  # upload the folder to the Hugging Face Hub after writing it locally
    repo_id: str = ""  # Hub model repo <user or org>/<name> (required with push_to_hub=true)
    private: bool = True  # create the Hub repo as private


@dataclass
class EvalArgs:
    model: str = ""  # HF model folder, run folder (its export/, or checkpoints/step_N/hf with step=N) or checkpoint
    step: int = -1  # with a run folder: evaluate this checkpoint; -1 = the final export
    data: str = ""  # embedded task name or JSONL/parquet file (prompt, answer); "" = the run's own held-out set
    samples: int = 0  # samples per problem (pass@1 over k); 0 = the config's eval.samples
    max_tokens: int = 0  # completion cap; 0 = the config's eval.max_tokens (or rollout.max_tokens)
    out: str = ""  # folder for eval.jsonl (appended), samples.jsonl and pareto.png; "" = evals/<model label>
    compare: str = ""  # comma-separated further models (same forms as model), evaluated the same way, on one plot


def parse_args(cls, argv: list[str], command: str, config_keys: bool = False) -> tuple:
    """``key=value`` strings -> (``cls`` instance, dotted config overrides). Dotted keys are config overrides (only
    where ``config_keys``); any other unknown key fails, suggesting the closest argument."""
    known = {f.name: f for f in fields(cls)}
    values, overrides = {}, []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq:
            raise CommandError(f"argument {arg!r} must look like key=value (arguments: {', '.join(known)})")
        if config_keys and "." in key:
            overrides.append(arg)
            continue
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            more = " (or a dotted config key such as eval.temperature=0)" if config_keys else ""
            raise CommandError(f"unknown argument {key!r} for `launch.py {command}`{hint} Arguments: "
                               f"{', '.join(known)}{more}")
        values[key] = _coerce(key, value, type(getattr(cls(), key)))
    return cls(**values), overrides


def _coerce(key: str, value: str, kind: type):
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise CommandError(f"{key}={value!r} must be true or false")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except ValueError:
        raise CommandError(f"{key}={value!r} must be {kind.__name__}") from None


# ------------------------------------------------------------------ export
def export_command(argv: list[str]) -> Path:
    from trainers.cli.export import push_to_hub, write_export

    a, _ = parse_args(ExportArgs, argv, "export")
    if not a.run:
        raise CommandError("export needs run=<run folder>")
    if a.push_to_hub and not a.repo_id:
        raise CommandError("push_to_hub=true needs repo_id=<user or org>/<name>")
    run, step = Path(a.run), None if a.step < 0 else a.step
    src = export_source(run, step)  # fails here, naming the path, when the run or the step is not there
    out = Path(a.out) if a.out else run / ("export" if step is None else f"export_step_{step}")
    folder = write_export(out, run, step, a.overwrite, a.repo_id if a.push_to_hub else "")
    print(f"exported {src} -> {folder}")
    if a.push_to_hub:
        print(f"pushed to {push_to_hub(folder, a.repo_id, a.private)}")
    return folder


# ------------------------------------------------------------------ eval
@dataclass(frozen=True)
class EvalModel:
    path: Path  # HF model folder
    run: Path | None  # the run it came from, if any
    label: str  # name on the plot and in eval.jsonl
    step: int | None  # checkpoint step, if it is one


def resolve_model(spec: str, step: int | None = None) -> EvalModel:
    """``model=`` -> the HF folder to load: a run folder (its export/, or checkpoint ``step``), a checkpoint folder
    (``.../checkpoints/step_N``), or an HF model folder (inside a run or not)."""
    p = Path(spec)
    if not p.is_dir():
        raise CommandError(f"model={spec!r} is not a folder")
    if (p / "config.yaml").is_file():  # a run folder
        return EvalModel(export_source(p, step), p, p.name + (f"/step_{step}" if step is not None else ""), step)
    if (p / "COMPLETE").is_file():  # a checkpoint folder
        run, n = p.parent.parent, int(p.name.removeprefix("step_"))
        return EvalModel(export_source(run, n), run, f"{run.name}/step_{n}", n)
    if not is_hf_model(p):
        raise CommandError(f"model={spec!r} is neither an HF model folder (config.json + model.safetensors), a run "
                           f"folder (config.yaml) nor a checkpoint folder (COMPLETE)")
    if (p.parent / "config.yaml").is_file():  # <run>/export
        return EvalModel(p, p.parent, p.parent.name, None)
    if p.name == "hf" and (p.parent / "COMPLETE").is_file():  # <run>/checkpoints/step_N/hf
        return resolve_model(str(p.parent))
    return EvalModel(p, None, p.name, None)


def eval_models(a: EvalArgs) -> list[EvalModel]:
    """The models ``model=`` and ``compare=`` name, checked (paths, steps) before anything is loaded."""
    if not a.model:
        raise CommandError("eval needs model=<HF model folder | run folder | checkpoint folder>")
    models = [resolve_model(a.model, None if a.step < 0 else a.step)]
    return _unique_labels(models + [resolve_model(m) for m in a.compare.split(",") if m])


def eval_overrides(a: EvalArgs) -> list[str]:
    """``samples=`` and ``max_tokens=`` as config overrides."""
    return ([f"eval.samples={a.samples}"] if a.samples else []) + \
        ([f"eval.max_tokens={a.max_tokens}"] if a.max_tokens else [])


def check_eval_config(cfg) -> None:
    cap = cfg.eval.max_tokens or cfg.rollout.max_tokens
    if cap >= cfg.rollout.max_model_len:
        raise CommandError(f"max_tokens={cap} must be < rollout.max_model_len={cfg.rollout.max_model_len}")
    if cfg.eval.samples < 1:
        raise CommandError(f"samples={cfg.eval.samples} must be >= 1")


def eval_out(a: EvalArgs, models: list[EvalModel]) -> Path:
    return Path(a.out) if a.out else Path("evals") / models[0].label.replace("/", "_")


def evaluate_models(models: list[EvalModel], cfg, rows: list[dict], data_name: str, out: Path) -> list[dict]:
    """Each model in a fresh engine under ``cfg``; eval.jsonl records appended in ``out``, the plot, a table."""
    from trainers.backend import distributed

    # a one-rank group of our own, as in training: every engine then joins it (external_launcher), so engines can
    # be started one after another in this process (vLLM would otherwise create a group the next engine trips on)
    distributed.init(cfg.deepspeed.backend)
    records = [_evaluate_one(m, cfg, rows, data_name, out) for m in models]
    _report(records, out)
    return records


def _unique_labels(models: list[EvalModel]) -> list[EvalModel]:
    seen: dict[str, int] = {}
    out = []
    for m in models:
        seen[m.label] = seen.get(m.label, 0) + 1
        out.append(m if seen[m.label] == 1 else replace(m, label=f"{m.label} ({seen[m.label]})"))
    return out


def _evaluate_one(model: EvalModel, cfg, rows: list[dict], name: str, out: Path) -> dict:
    """One fresh engine on the model, the trainer's evaluation, one eval.jsonl record (+ a few samples)."""
    import gc

    from transformers import AutoTokenizer

    from rollout.vllm_engine import VLLMEngine
    from trainers.data import to_prompts
    from trainers.evaluation import evaluate
    from trainers.run.runlog import RunFolder

    prompts = to_prompts(rows, AutoTokenizer.from_pretrained(model.path), cfg.data)
    engine = VLLMEngine(str(model.path), cfg.rollout, seed=cfg.run.seed)
    samples: list[dict] = []
    t0 = time.perf_counter()
    m = evaluate(engine, prompts, cfg, 0, 1, samples)
    rec = {"model": str(model.path), "label": model.label, "step": model.step, "dataset": name,
           "samples": cfg.eval.samples, "temperature": cfg.eval.temperature,
           "max_tokens": cfg.eval.max_tokens or cfg.rollout.max_tokens, "eval_s": time.perf_counter() - t0,
           "time": time.strftime("%Y-%m-%dT%H:%M:%S")} | m
    folder = RunFolder(out)
    folder.log_eval(rec)
    for s in samples:
        folder.append("samples.jsonl", {"label": model.label} | s)
    del engine
    gc.collect()
    return rec


def _report(records: list[dict], out: Path) -> None:
    from trainers.run.plots import eval_points, pareto_plot

    plot = pareto_plot(eval_points(records, label_key="label"), out / "pareto.png",
                       title=f"{records[0]['dataset']}: accuracy vs mean tokens")
    cols = (("acc", "eval/acc", "{:.3f}"), ("mean", "eval/len_mean", "{:.1f}"), ("median", "eval/len_median", "{:.1f}"),
            ("p90", "eval/len_p90", "{:.1f}"), ("trunc", "eval/truncated_frac", "{:.3f}"),
            ("tok/correct", "eval/tokens_per_correct", "{:.1f}"))
    width = max(len(r["label"]) for r in records) + 2
    print(f"{'model':{width}s}" + "".join(f"{c:>12s}" for c, _, _ in cols))
    for r in records:
        print(f"{r['label']:{width}s}" + "".join(f"{fmt.format(r[k]):>12s}" for _, k, fmt in cols))
    print(f"eval.jsonl and {plot.name} in {out}")


def show_help(name: str) -> None:
    """The usage line and the documented arguments of ``launch.py <name>``."""
    import inspect

    cls = ExportArgs if name == "export" else EvalArgs
    print(__doc__.split("\n\n")[1])
    print(f"{name} arguments:")
    print("\n".join(line for line in inspect.getsource(cls).splitlines() if " = " in line))
