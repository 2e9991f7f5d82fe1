"""Build the tiny "overthinking" base model: a character-level Llama SFT-trained on re-checking traces.

The RL recipes need a base policy that is right often but not always and whose responses vary a lot in length
(redundant re-checks), so that concise-reasoning rewards have something to remove. Building it takes a few
minutes on 2 CPU cores, so the result is cached under ``$LACONIC_CACHE`` (default ``~/.cache/laconic``) in a
folder named by a hash of the build parameters, written atomically.

CLI: ``python -m recipes.tasks.base_model [--out CACHE_DIR] [--seed N] [--force] [--set KEY=VALUE ...]``
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time
import uuid

from recipes.tasks import arith
from recipes.tasks.data import TARGET_TEXT, with_length_line
from rewards.verifiers import exact_integer, extract_answer

BUILD_VERSION = 2  # bump when the build recipe changes in a way the parameters do not capture
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "generation_config.json", "build_config.json", "base_report.json")
DEFAULT_BUILD = {
    "task": "arith",
    "n_train": 12000,
    "n_eval": 256,
    # model: LlamaForCausalLM, narrow and deep: 6 layers of width 64 (2 heads of 32, supported by vLLM's CPU
    # attention) train as fast as 2 layers of width 128 but make a decode step cost ~2x a one-layer EAGLE head's,
    # which is what lets speculative decoding pay on a CPU (benchmarks/rollout_speedup.py)
    "num_hidden_layers": 6,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    # SFT
    "max_steps": 3000,
    "batch_size": 4,
    "learning_rate": 2e-3,
    "warmup_steps": 20,
    "weight_decay": 0.0,
    # report
    "eval_max_new_tokens": 512,
    "eval_batch_size": 256,
}
# Optional build parameters, left out of the cache key at their defaults (adding them rebuilt no existing base).
# LCPO needs a base that reads a length instruction at all: L1 starts from a pretrained LLM that roughly knows what
# "Think for 500 tokens." asks for, ours has never seen such a line (with one appended its accuracy falls from 0.78
# to 0.02). With ``length_instructions`` = s > 0 a share s of the SFT prompts carries the line, stating the trace's
# own token length (eos included) times a factor drawn uniformly from [1 - spread, 1 + spread] ("max": N is the
# length times [1, 1 + spread]): a loose instruction-follower whose adherence LCPO then has to sharpen.
#
# ``tail_share`` = s > 0 gives the base reasoning RL's length shape: a share s of the SFT traces re-checks a number of
# times drawn uniformly from ``tail_rechecks`` (e.g. 18-34: 1,050-1,950 tokens against the body's median of ~100),
# so a few completions per rollout run 10-20x the median (p99 / median >= 10) with the context to hold them
# (``max_position_embeddings``). The body keeps the default geometric re-checks.
OPTIONAL_BUILD = {
    "tail_share": 0.0,
    "tail_rechecks": [18, 34],
    "length_instructions": 0.0,
    "instruction_mode": "exact",
    "instruction_spread": 0.5,
    "instruction_eval_targets": [50, 100, 150, 200, 300],
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """``cache_dir``, else ``$LACONIC_CACHE``, else ``~/.cache/laconic``."""
    root = cache_dir or os.environ.get("LACONIC_CACHE") or pathlib.Path.home() / ".cache" / "laconic"
    return pathlib.Path(root).expanduser()


def build_params(seed: int = 0, **overrides) -> dict:
    """Full, validated build parameters (defaults + overrides); these are what the cache key hashes."""
    known = {**DEFAULT_BUILD, **OPTIONAL_BUILD}
    unknown = set(overrides) - set(known)
    if unknown:
        raise TypeError(f"unknown build parameters: {sorted(unknown)}; known: {sorted(known)}")
    params = {**DEFAULT_BUILD, **overrides, "seed": int(seed), "build_version": BUILD_VERSION}
    for key, default in OPTIONAL_BUILD.items():
        if params.get(key, default) == default:
            params.pop(key, None)
    opt = {**OPTIONAL_BUILD, **params}
    if not 0.0 <= opt["length_instructions"] <= 1.0:
        raise ValueError(f"length_instructions must be in [0, 1], got {opt['length_instructions']}")
    if opt["instruction_mode"] not in TARGET_TEXT:
        raise ValueError(f"instruction_mode must be one of {sorted(TARGET_TEXT)}, got {opt['instruction_mode']!r}")
    if not 0.0 <= opt["instruction_spread"] < 1.0:
        raise ValueError(f"instruction_spread must be in [0, 1), got {opt['instruction_spread']}")
    if not opt["instruction_eval_targets"] or min(opt["instruction_eval_targets"]) < 1:
        raise ValueError("instruction_eval_targets must be a non-empty list of positive token counts")
    if not 0.0 <= opt["tail_share"] < 1.0:
        raise ValueError(f"tail_share must be in [0, 1), got {opt['tail_share']}")
    lo_hi = opt["tail_rechecks"]
    if len(lo_hi) != 2 or not arith.MAX_RECHECKS < lo_hi[0] <= lo_hi[1]:
        raise ValueError(f"tail_rechecks must be [min, max] with {arith.MAX_RECHECKS} < min <= max (the body "
                         f"re-checks at most {arith.MAX_RECHECKS} times), got {lo_hi}")
    if params["hidden_size"] % params["num_attention_heads"]:
        raise ValueError("hidden_size must be divisible by num_attention_heads")
    if params["n_eval"] < 1 or params["n_train"] < 1:
        raise ValueError("n_train and n_eval must be positive")
    return params


def build_key(params: dict) -> str:
    """Short stable hash of the build parameters (the cache subfolder name)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return f"{params['task']}-base-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def is_complete(folder: pathlib.Path) -> bool:
    return folder.is_dir() and all((folder / f).is_file() for f in REQUIRED_FILES)


def ensure_base_model(cache_dir: str | None = None, seed: int = 0, force: bool = False,
                      **build_overrides) -> pathlib.Path:
    """Return the cached base-model folder for these build parameters, building it first if needed."""
    params = build_params(seed, **build_overrides)
    root = cache_root(cache_dir)
    final = root / build_key(params)
    if is_complete(final) and not force:
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    try:
        build_base_model(tmp, params)
        _publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _publish(tmp: pathlib.Path, final: pathlib.Path) -> None:
    """Atomically move a finished build into place, replacing a stale/forced one."""
    if final.exists():
        trash = final.with_name(f".trash-{final.name}-{uuid.uuid4().hex[:8]}")
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        if not is_complete(final):  # lost a race against a concurrent build only if that build is complete
            raise


def build_base_model(out: pathlib.Path, params: dict) -> dict:
    """Data + SFT + report into ``out`` (which must exist); returns the report."""
    import torch

    torch.set_num_threads(int(os.environ.get("LACONIC_NUM_THREADS", "2")))
    t0 = time.time()
    train_rows, eval_rows = arith.make_splits(params["seed"], params["n_train"], params["n_eval"])
    from recipes.tasks.tokenizer import build_tokenizer

    tokenizer = build_tokenizer()
    model = _init_model(params, tokenizer)
    t_data = time.time()
    _sft(model, tokenizer, train_rows, params, out / "_sft")
    t_sft = time.time()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "build_config.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    report = evaluate(model, tokenizer, eval_rows, params)
    if option(params, "length_instructions") > 0:
        report["with_instructions"] = evaluate_instructions(model, tokenizer, eval_rows, params)
    t_end = time.time()
    report.update(
        build_seconds=round(t_end - t0, 1),
        sft_seconds=round(t_sft - t_data, 1),
        eval_seconds=round(t_end - t_sft, 1),
        num_params=sum(p.numel() for p in model.parameters()),
        n_train=len(train_rows),
        n_eval=len(eval_rows),
        seed=params["seed"],
        reference=reference_trace_stats(tokenizer, eval_rows, params["seed"]),
    )
    (out / "base_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _init_model(params: dict, tokenizer):
    """Seeded, randomly initialised tiny Llama whose vocabulary is exactly the tokenizer's."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params["hidden_size"],
        intermediate_size=params["intermediate_size"],
        num_hidden_layers=params["num_hidden_layers"],
        num_attention_heads=params["num_attention_heads"],
        num_key_value_heads=params["num_attention_heads"],
        head_dim=params["hidden_size"] // params["num_attention_heads"],
        max_position_embeddings=params["max_position_embeddings"],
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    torch.manual_seed(params["seed"])
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, max_length=params["max_position_embeddings"])
    return model


def option(params: dict, key: str):
    """An optional build parameter (``OPTIONAL_BUILD``), its default when the build left it out."""
    return params.get(key, OPTIONAL_BUILD[key])


def sft_rows(train_rows: list[dict], seed: int, tokenizer=None, params: dict | None = None) -> list[dict]:
    """Prompt/completion rows (TRL appends eos to the completion and trains on completion tokens only). With
    ``length_instructions`` in ``params``, that share of prompts states the completion's length (see
    ``OPTIONAL_BUILD``); which rows and which factor are drawn per row (seed, uid), independent of row order."""
    import random

    params = params or {}
    share = option(params, "length_instructions")
    mode, spread = option(params, "instruction_mode"), option(params, "instruction_spread")
    tail, (tail_lo, tail_hi) = option(params, "tail_share"), option(params, "tail_rechecks")
    out = []
    for r in train_rows:
        tail_rng = random.Random(f"tail-{seed}-{r['uid']}")
        n = tail_rng.randint(tail_lo, tail_hi) if tail > 0 and tail_rng.random() < tail else None
        trace = arith.make_trace(r, arith.trace_rng(seed, r["uid"]), n_rechecks=n)
        prompt = r["prompt"]
        rng = random.Random(f"instruction-{seed}-{r['uid']}")
        if share > 0 and rng.random() < share:
            n = len(tokenizer(trace)["input_ids"]) + 1  # completion tokens as the length rewards count them
            lo = 1.0 if mode == "max" else 1.0 - spread
            prompt = with_length_line(prompt, mode, max(1, round(n * rng.uniform(lo, 1.0 + spread))))
        out.append({"prompt": prompt, "completion": trace})
    return out


def sft_dataset(train_rows: list[dict], seed: int, tokenizer=None, params: dict | None = None):
    from datasets import Dataset

    return Dataset.from_list(sft_rows(train_rows, seed, tokenizer, params))


def _sft(model, tokenizer, train_rows: list[dict], params: dict, work_dir: pathlib.Path) -> None:
    """Supervised fine-tuning with TRL on CPU; shows a progress bar and logs the loss every 100 steps."""
    with _single_process_env():
        _sft_in_this_process(model, tokenizer, train_rows, params, work_dir)


@contextlib.contextmanager
def _single_process_env():
    """The build is a one-process job whatever started this process: with no live process group, hide the launcher
    variables (a ``deepspeed`` launch, or ones left by a group that is gone) from accelerate while it runs, so it does
    not try to join ranks that are not building; restored afterwards for the trainer."""
    import torch.distributed as dist

    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ[k] for k in names if k in os.environ} if not dist.is_initialized() else {}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


def _sft_in_this_process(model, tokenizer, train_rows: list[dict], params: dict, work_dir: pathlib.Path) -> None:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=str(work_dir),
        use_cpu=True,
        bf16=False,
        seed=params["seed"],
        data_seed=params["seed"],
        max_steps=params["max_steps"],
        per_device_train_batch_size=params["batch_size"],
        learning_rate=params["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=params["warmup_steps"],
        weight_decay=params["weight_decay"],
        # Padding-free batches (transformers masks each packed sequence separately) instead of length-grouped
        # ones: with per-batch token-mean loss, length-grouped batches overweight short traces and the model
        # learns to stop re-checking too early. Traces are far below the context size, so no truncation.
        padding_free=True,
        max_length=None,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        completion_only_loss=True,
        gradient_checkpointing=False,  # TRL turns it on by default; it only costs time for a model this small
        disable_tqdm=True,  # the bar below is drawn on the terminal (a run's console sends the library's to its log)
    )
    data = sft_dataset(train_rows, params["seed"], tokenizer, params)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[_ProgressCallback()])
    trainer.train()
    shutil.rmtree(work_dir, ignore_errors=True)
    model.eval()


def _ProgressCallback():
    """A ``transformers`` callback drawing the SFT's progress bar on the terminal (:mod:`trainers.run.console`)."""
    from transformers import TrainerCallback

    from trainers.run.console import progress_bar

    class Progress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress_bar(total=state.max_steps, desc="base model SFT", unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return Progress()


def sample_completions(model, tokenizer, prompts: list[str], seed: int, max_new_tokens: int,
                       batch_size: int = 256) -> list[list[int]]:
    """Temperature-1 samples (no top-k/top-p), one per prompt; token ids up to and including eos."""
    import torch

    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True,
                          padding_side="left")
        torch.manual_seed(seed * 1_000_003 + start)
        with torch.no_grad():
            gen = model.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                                 max_new_tokens=max_new_tokens, eos_token_id=eos,
                                 pad_token_id=tokenizer.pad_token_id)
        for row in gen[:, batch["input_ids"].shape[1]:].tolist():
            out.append(row[:row.index(eos) + 1] if eos in row else row)
    return out


def _length_stats(lengths: list[int]) -> dict:
    s = sorted(lengths)
    return {
        "mean_tokens": round(statistics.fmean(s), 1),
        "median_tokens": statistics.median(s),
        "p90_tokens": s[min(len(s) - 1, int(0.9 * len(s)))],
        "max_tokens": s[-1],
        "min_tokens": s[0],
    }


def evaluate(model, tokenizer, eval_rows: list[dict], params: dict, targets: list[int] | None = None) -> dict:
    """Held-out accuracy and response-length statistics of temperature-1 samples; with ``targets`` (a stated length
    per row) also the length adherence mean |n - N| / N, overall and per target."""
    t0 = time.time()
    ids = sample_completions(model, tokenizer, [r["prompt"] for r in eval_rows], params["seed"],
                             params["eval_max_new_tokens"], params["eval_batch_size"])
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    eos = tokenizer.eos_token_id
    correct = [exact_integer(t, r["answer"]) for t, r in zip(texts, eval_rows)]
    rechecks = [t.count("Let me double-check") for t in texts]
    adherence = {}
    if targets is not None:
        err = [abs(len(x) - n) / n for x, n in zip(ids, targets)]
        adherence = {
            "target_err": round(statistics.fmean(err), 4),
            "by_target": {str(t): {"target_err": round(statistics.fmean(e for e, n in zip(err, targets) if n == t), 4),
                                   "mean_tokens": round(statistics.fmean(len(x) for x, n in zip(ids, targets)
                                                                         if n == t), 1)}
                          for t in sorted(set(targets))},
        }
    return {
        "accuracy": round(sum(correct) / len(correct), 4),
        "format_rate": round(sum(extract_answer(t) is not None for t in texts) / len(texts), 4),
        **_length_stats([len(x) for x in ids]),
        "truncated_fraction": round(sum(eos not in x for x in ids) / len(ids), 4),
        "rechecks_histogram": {str(k): rechecks.count(k) for k in sorted(set(rechecks))},
        "accuracy_by_rechecks": {str(k): round(statistics.fmean(c for c, n in zip(correct, rechecks) if n == k), 3)
                                 for k in sorted(set(rechecks))},
        "eval_sampling": {"temperature": 1.0, "top_k": None, "top_p": 1.0,
                          "max_new_tokens": params["eval_max_new_tokens"], "seed": params["seed"]},
        "generate_seconds": round(time.time() - t0, 1),
        "example": texts[0],
        **adherence,
    }


def evaluate_instructions(model, tokenizer, eval_rows: list[dict], params: dict) -> dict:
    """The held-out problems with a length line (targets cycled over ``instruction_eval_targets``): accuracy, lengths
    and adherence, mean |n - N| / N overall and per target, as ``eval/target_err`` reports it for an RL run."""
    mode, targets = option(params, "instruction_mode"), option(params, "instruction_eval_targets")
    goal = [targets[i % len(targets)] for i in range(len(eval_rows))]
    rows = [dict(r, prompt=with_length_line(r["prompt"], mode, n)) for r, n in zip(eval_rows, goal)]
    return evaluate(model, tokenizer, rows, params, targets=goal)


def reference_trace_stats(tokenizer, eval_rows: list[dict], seed: int) -> dict:
    """Token lengths (incl. eos) of the generator's own traces and of the minimal (no re-check) traces."""
    def n_tokens(text: str) -> int:
        return len(tokenizer(text)["input_ids"]) + 1

    sampled = [n_tokens(arith.make_trace(r, arith.trace_rng(seed, r["uid"]))) for r in eval_rows]
    minimal = [n_tokens(arith.make_trace(r, arith.trace_rng(seed, r["uid"]), n_rechecks=0)) for r in eval_rows]
    return {"traces": _length_stats(sampled), "minimal_mean_tokens": round(statistics.fmean(minimal), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="cache root (default $LACONIC_CACHE or ~/.cache/laconic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rebuild even if a cached model exists")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a build parameter (JSON value), e.g. --set max_steps=50")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    folder = ensure_base_model(args.out, seed=args.seed, force=args.force, **overrides)
    print(json.dumps(json.loads((folder / "base_report.json").read_text()), indent=2))
    print(f"base model: {folder}")


if __name__ == "__main__":
    main()
