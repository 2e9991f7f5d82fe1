"""Laconic's entry point.

    python launch.py [recipe=NAME] [key=value ...]               one process
    deepspeed [--num_gpus N] launch.py recipe=NAME [key=value ...]  N ranks (the launcher appends --local_rank=N)
    python launch.py export run=RUN [step=N] [out=DIR] [push_to_hub=true repo_id=USER/NAME]
    python launch.py eval model=MODEL [data=TASK|FILE] [samples=K] [compare=MODEL,...]

With no recipe the embedded default runs: the tiny overthinking base model (built and cached on first use) is
trained on the synthetic arithmetic task, offline, on CPU. ``recipe=tiny_sft`` only builds the base model.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process vLLM: ~5 s start instead of ~40 s
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_argv(argv: list[str]) -> tuple[str | None, list[str], int | None]:
    """-> (recipe, overrides, local_rank). Accepts ``recipe=NAME``, ``key=value`` and ``--local_rank=N``."""
    recipe, overrides, local_rank = None, [], None
    it = iter(argv)
    for arg in it:
        if arg.startswith("--local_rank"):
            local_rank = int(arg.split("=", 1)[1] if "=" in arg else next(it))
        elif arg.startswith("recipe="):
            recipe = arg.split("=", 1)[1]
        elif arg in ("-h", "--help"):
            print(__doc__)
            from recipes.loader import available

            print("recipes:", ", ".join(available()))
            raise SystemExit(0)
        else:
            overrides.append(arg)
    return recipe, overrides, local_rank


def resolve_model(cfg) -> str:
    """``model.path`` as a folder; ``tiny-base`` builds or finds the embedded base model, ``smollm2-135m-instruct``
    converts or finds the real one from its package (one builder at a time)."""
    from recipes.tasks import smollm2

    if cfg.model.path == smollm2.NAME:
        return str(smollm2.ensure_smollm2())
    if cfg.model.path != "tiny-base":
        if not os.path.isdir(cfg.model.path):
            raise FileNotFoundError(f"model.path={cfg.model.path!r} is not a folder (an HF model folder, 'tiny-base' "
                                    f"or 'smollm2-135m-instruct')")
        if not os.path.isfile(os.path.join(cfg.model.path, "config.json")):
            raise FileNotFoundError(f"model.path={cfg.model.path!r} has no config.json: not an HF model folder")
        return cfg.model.path
    from recipes.tasks.base_model import ensure_base_model
    from recipes.tasks.cache import build_lock

    with build_lock():
        return str(ensure_base_model(seed=cfg.tiny_base.seed, force=cfg.tiny_base.force and cfg.job == "sft",
                                     **cfg.tiny_base.build_overrides()))


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("export", "eval"):
        return command(argv[0], argv[1:])
    from recipes.loader import ConfigError, load
    from trainers.config import validate

    recipe, overrides, local_rank = parse_argv(argv)
    try:
        cfg, yaml_text = load(recipe, overrides)
        validate(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except (ConfigError, ValueError, KeyError) as e:
        raise SystemExit(f"laconic: config error: {e}") from None
    if cfg.job == "sft":
        print(f"base model ready: {resolve_model(cfg)}")
        return None
    from trainers.run import console

    with console.quiet(cfg.logging.verbose):  # third-party output -> the run folder's console.log
        return _run(cfg, yaml_text, local_rank)


def _run(cfg, yaml_text: str, local_rank: int | None) -> dict:
    from recipes.tasks.data import load_task
    from trainers.run.checkpoint import check_resume, check_stop_at
    from trainers.run.console import say
    from trainers.run.runlog import preflight

    try:  # everything cheap is checked before a model is built or loaded
        check_resume(cfg.run.resume)
        check_stop_at(cfg.trainer.stop_at, cfg.run.resume, cfg.run.output_dir)
    except ValueError as e:
        raise SystemExit(f"laconic: config error: {e}") from None
    try:
        if cfg.run.output_dir:
            preflight(cfg.run.output_dir, cfg.run.min_free_mb, cfg.run.resume)
        else:
            preflight("runs", cfg.run.min_free_mb)
    except OSError as e:
        raise SystemExit(f"laconic: output error: {e}") from None
    try:
        task = load_task(cfg.data)
    except (OSError, ValueError) as e:
        raise SystemExit(f"laconic: data error: {e}") from None
    try:
        model_path = resolve_model(cfg)
    except FileNotFoundError as e:
        raise SystemExit(f"laconic: model error: {e}") from None
    from trainers.rl import NonFiniteLoss, StorageError, Trainer

    trainer = Trainer(cfg, model_path, task, yaml_text, local_rank=local_rank)
    try:
        summary = trainer.fit()
    except (NonFiniteLoss, StorageError) as e:
        trainer.tracker.finish()
        raise SystemExit(f"laconic: run stopped at step {trainer.step}: {e}") from None
    if trainer.d.is_main:
        say(_stopped(summary) if "stopped_at" in summary else _report(summary, trainer.run.path))
    return summary


def _stopped(summary: dict) -> str:
    return (f"stopped after step {summary['stopped_at']} (trainer.stop_at) in {summary['wall_s']:.0f} s; checkpoint "
            f"{summary['checkpoint']}; continue with run.resume=auto and the same run.output_dir")


def command(name: str, argv: list[str]):
    """``export`` / ``eval`` (:mod:`trainers.cli.commands`): a bad argument or path exits with one clear line, before
    anything heavy is loaded; a failed push says the local export is intact."""
    from recipes.loader import ConfigError
    from trainers.cli.commands import CommandError, ExportError, export_command, show_help

    if argv[:1] in (["-h"], ["--help"]):
        show_help(name)
        raise SystemExit(0)
    try:
        if name == "export":
            return export_command(argv)
        models, cfg, rows, data_name, out = _prepare_eval(argv)
    except (CommandError, ExportError, ConfigError) as e:
        raise SystemExit(f"laconic {name}: {e}") from None
    from trainers.cli.commands import evaluate_models

    return evaluate_models(models, cfg, rows, data_name, out)


def _prepare_eval(argv: list[str]) -> tuple:
    """-> (models, config, held-out rows, data set name, output folder), everything checked."""
    from recipes.loader import load
    from recipes.tasks.data import heldout_rows
    from trainers.cli import commands as c

    a, overrides = c.parse_args(c.EvalArgs, argv, "eval", config_keys=True)
    models = c.eval_models(a)
    run_config = str(models[0].run / "config.yaml") if models[0].run else None
    cfg, _ = load(run_config, overrides + c.eval_overrides(a))
    c.check_eval_config(cfg)
    try:
        rows, data_name = heldout_rows(cfg.data, a.data)
    except (FileNotFoundError, ValueError) as e:
        raise c.CommandError(str(e)) from None
    return models, cfg, rows, data_name, c.eval_out(a, models)


def _report(summary: dict, run_dir) -> str:
    b, a = summary["before"], summary["after"]
    rows = [("held-out accuracy", b["eval/acc"], a["eval/acc"], "{:.3f}"),
            ("mean tokens", b["eval/len_mean"], a["eval/len_mean"], "{:.1f}"),
            ("p90 tokens", b["eval/len_p90"], a["eval/len_p90"], "{:.1f}")]
    lines = [f"\n{'':20s}{'before':>10s}{'after':>10s}"]
    lines += [f"{name:20s}{fmt.format(x):>10s}{fmt.format(y):>10s}" for name, x, y, fmt in rows]
    if "eval/target_err" in b and "eval/target_err" in a:
        lines.append(f"{'length target error':20s}{b['eval/target_err']:>10.3f}{a['eval/target_err']:>10.3f}")
    t = summary["totals"]
    lines.append(f"{t['steps']} steps in {t['wall_s']:.0f} s on {t['ranks']} rank(s)")
    d = summary.get("drafter")
    if d:
        head = (f"drafter ({d['method']}): mean acceptance {d.get('train_accept_len', 0.0):.2f} tokens per round on the "
                f"training rollouts; ")
        measured = sorted(d.get("measured_speedup", {}).items(), key=lambda kv: int(kv[0]))
        if measured:
            ups = ", ".join(f"batch {k}: {v:.2f}x" for k, v in measured)
            lines.append(head + f"rollout speedup measured at the end (held-out prompts, {d['measured_calls']} calls "
                         f"per batch size, <= {d['measured_max_tokens']} tokens, with vs without speculation): {ups}")
        else:
            ups = ", ".join(f"batch <= {k}: {v:.2f}x" for k, v in sorted(d.get("speedup_by_batch", {}).items(),
                                                                           key=lambda kv: int(kv[0])))
            lines.append(head + "decode-step goodput with vs without speculation as the controller estimates it: "
                         f"{ups or 'not measured'} (benchmarks/rollout_speedup.py measures it)")
    lines.append(f"run folder: {run_dir}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
