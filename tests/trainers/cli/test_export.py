"""Export, model card, Pareto plot, Hub push and ``launch.py export`` / ``launch.py eval``.

The fast tests check the pure parts (frontier, plot, card rendering) and every error that must come before anything
heavy is loaded. The slow ones share one tiny run with a drafter and check the promise of an export: it is the
trained policy of the step asked for, it loads in transformers and in vLLM with its drafter and decodes greedily
like the HF model, its card shows the run's real numbers, and ``eval`` on it reproduces the run's own evaluation.
"""
import gc
import json
import sys
from pathlib import Path

import pytest
import torch

import launch
from trainers.cli.commands import CommandError, ExportArgs, parse_args
from trainers.cli.export import ExportError, model_card, serving_config, write_export
from trainers.run.plots import ParetoPoint, pareto_frontier, pareto_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SENTINEL = "hf_laconicTestTokenNeverWritten0123456789"
METRIC_KEYS = {"eval/acc", "eval/n", "eval/len_mean", "eval/len_median", "eval/len_p90", "eval/truncated_frac",
               "eval/tokens_per_correct"}


# ------------------------------------------------------------------ pure parts
@pytest.mark.unit
def test_pareto_frontier_worked_example():
    a, b, c = ParetoPoint("a", 100, 0.5), ParetoPoint("b", 80, 0.5), ParetoPoint("c", 120, 0.7)
    assert pareto_frontier([a, b, c]) == [b, c]  # a costs more tokens than b for the same accuracy
    d = ParetoPoint("d", 90, 0.9)
    assert pareto_frontier([d, a, b, c]) == [b, d]  # c now costs more than d for less


@pytest.mark.unit
def test_pareto_plot_writes_a_png(tmp_path):
    from matplotlib.image import imread

    path = pareto_plot([ParetoPoint("before", 250.0, 0.40), ParetoPoint("after", 120.0, 0.45)], tmp_path / "p.png")
    assert path == tmp_path / "p.png" and path.read_bytes()[:8] == PNG_MAGIC
    img = imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
    assert img[..., :3].std() > 0.05  # something was drawn
    with pytest.raises(ValueError, match="at least one"):
        pareto_plot([], tmp_path / "empty.png")


def _config_dict(*overrides: str) -> dict:
    """The dict a run's config.yaml holds, for a real recipe."""
    import yaml

    from recipes.loader import load

    return yaml.safe_load(load("tiny_grpo", list(overrides))[1])


@pytest.mark.unit
def test_model_card_renders_the_numbers_method_and_serving():
    config = _config_dict("drafter.enabled=true", "model.lora.rank=8", "algo.kl_coef=0.01", "trainer.max_steps=7")
    before = {"step": 0, "dataset": "arith", "eval/n": 64.0, "eval/acc": 0.4375, "eval/len_mean": 231.3125,
              "eval/len_median": 200.0, "eval/len_p90": 390.0, "eval/truncated_frac": 0.125,
              "eval/tokens_per_correct": 528.7142857}
    after = {"step": 7, "dataset": "arith", "eval/n": 64.0, "eval/acc": 0.6875, "eval/len_mean": 142.5625,
             "eval/len_median": 130.0, "eval/len_p90": 250.0, "eval/truncated_frac": 0.0,
             "eval/tokens_per_correct": None}  # JSON null: none correct would give inf
    summary = {"totals": {"steps": 7, "wall_s": 81.2, "ranks": 1, "rollout_tokens": 12345},
               "drafter": {"version": 9, "lossless": "patched"}}
    card = model_card(config, summary, before, after, run_name="tiny-run", local_path="/models/tiny",
                      has_drafter=True, plot="pareto.png")
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "| held-out accuracy (pass@1) | 0.438 | 0.688 |" in card
    assert "| mean tokens | 231.3 | 142.6 |" in card
    assert "| p90 tokens | 390.0 | 250.0 |" in card
    assert "| truncation rate | 0.125 | 0.000 |" in card
    assert "| tokens per correct answer | 528.7 | n/a |" in card
    assert "before (step 0)" in card and "after (step 7)" in card
    assert "![held-out accuracy vs mean tokens](pareto.png)" in card
    assert "`grpo`" in card and "`correctness` x 1.0" in card and "LoRA rank 8 (merged" in card and "KL" in card
    assert "recipe `tiny_grpo`" in card and "base model `tiny-base`" in card and "12345 rollout tokens" in card
    spec = serving_config(config, "PATH")
    assert spec == {"method": "eagle", "model": "PATH/drafter", "num_speculative_tokens": 4,
                    "draft_sample_method": "probabilistic"}
    assert 'path = "/models/tiny"' in card and 'f"{path}/drafter"' in card and json.dumps(spec) in card
    assert "version 9" in card
    hub = model_card(config, summary, before, None, run_name="tiny-run", step=3, repo_id="me/tiny")
    assert 'snapshot_download("me/tiny")' in hub and "after (step 3 (not evaluated))" in hub
    assert "| held-out accuracy (pass@1) | 0.438 | n/a |" in hub and "## Drafter" not in hub
    assert "speculative_config" not in hub  # no drafter folder -> plain serving


# ------------------------------------------------------------------ errors before anything heavy
def _fake_model(folder: Path) -> Path:
    """A folder with the files an HF model folder has (real files; the weights are a single small tensor)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    return folder


def _fails(argv: list[str], *fragments: str) -> str:
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    msg = str(e.value.code)
    for f in fragments:
        assert f in msg, msg
    return msg


@pytest.mark.unit
def test_cli_errors_name_the_argument_or_path(tmp_path):
    _fails(["export", "rnu=x"], "unknown argument 'rnu'", "did you mean 'run'?")
    _fails(["export"], "export needs run=")
    _fails(["export", "run=x", "step=last"], "step='last' must be int")
    _fails(["export", "run=x", "push_to_hub=maybe"], "push_to_hub='maybe' must be true or false")
    _fails(["export", f"run={tmp_path}", "push_to_hub=true"], "push_to_hub=true needs repo_id=")
    _fails(["export", f"run={tmp_path}"], f"run={str(tmp_path)!r} is not a Laconic run folder (no config.yaml")
    run = tmp_path / "run"
    _fake_model(run / "checkpoints" / "step_2" / "hf")
    (run / "checkpoints" / "step_2" / "COMPLETE").write_text("")
    (run / "config.yaml").write_text("recipe: tiny_grpo\n")
    _fails(["export", f"run={run}", "step=1"], "step_1 is not a complete checkpoint", "complete steps", "[2]")
    _fails(["export", f"run={run}"], "no final export", "[2]")
    _fails(["eval", "modle=x"], "unknown argument 'modle'", "did you mean 'model'?")
    _fails(["eval"], "eval needs model=")
    _fails(["eval", f"model={tmp_path / 'nope'}"], "is not a folder")
    _fails(["eval", f"model={tmp_path}"], "neither an HF model folder")
    hf = _fake_model(tmp_path / "hf_model")
    _fails(["eval", f"model={hf}", "data=no_such_task"],
           "data='no_such_task' is neither a data file, gsm8k, rg:NAME nor an embedded task")
    _fails(["eval", f"model={hf}", f"data={tmp_path / 'missing.jsonl'}"], "missing.jsonl", "does not exist")
    _fails(["eval", f"model={hf}", "eval.tempreature=0"], "did you mean 'eval.temperature'?")
    _fails(["eval", f"model={hf}", f"compare={tmp_path / 'nope'}"], "is not a folder")


@pytest.mark.unit
def test_parse_args_types():
    a, extra = parse_args(ExportArgs, ["run=r", "step=3", "push_to_hub=true", "private=false"], "export")
    assert (a.run, a.step, a.push_to_hub, a.private, extra) == ("r", 3, True, False, [])
    with pytest.raises(CommandError, match="key=value"):
        parse_args(ExportArgs, ["run"], "export")


@pytest.mark.unit
def test_export_never_overwrites_a_folder(tmp_path):
    run = tmp_path / "run"
    _fake_model(run / "checkpoints" / "step_1" / "hf")
    (run / "checkpoints" / "step_1" / "COMPLETE").write_text("")
    (run / "config.yaml").write_text("recipe: tiny_grpo\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty"):
        write_export(out, run, step=1)
    assert (out / "keep.txt").read_text() == "mine"


def _push(folder: Path, tmp_path: Path, run_cmd, **env: str):
    code = "import sys; from trainers.cli.export import push_to_hub; push_to_hub(sys.argv[1], 'laconic-test/tiny')"
    hf_home = tmp_path / "hf_home"  # no stored token here
    return run_cmd([sys.executable, "-c", code, str(folder)], check=False, HF_HOME=str(hf_home),
                   HF_TOKEN_PATH=str(hf_home / "token"), **env)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_without_token_fails_first_and_keeps_the_folder(tmp_path, run_cmd):
    folder = _fake_model(tmp_path / "export")
    before = _snapshot(folder)
    p = _push(folder, tmp_path, run_cmd, HF_TOKEN="")
    assert p.returncode != 0
    assert "no Hugging Face token found" in p.stderr and "hf auth login" in p.stderr
    assert "nothing was uploaded" in p.stderr
    assert _snapshot(folder) == before


def test_push_to_unreachable_hub_fails_first_and_never_shows_the_token(tmp_path, run_cmd):
    folder = _fake_model(tmp_path / "export")
    before = _snapshot(folder)
    p = _push(folder, tmp_path, run_cmd, HF_TOKEN=SENTINEL, HF_ENDPOINT="http://127.0.0.1:9")  # nothing listens
    assert p.returncode != 0
    assert "cannot reach the Hugging Face Hub" in p.stderr and str(folder) in p.stderr
    assert SENTINEL not in p.stdout + p.stderr
    assert _snapshot(folder) == before


# ------------------------------------------------------------------ one tiny run, exported and evaluated
RUN = ["recipe=tiny_grpo", "trainer.prompts_per_step=2", "rollout.n=2", "trainer.micro_batch_size=4",
       "data.n_eval=8", "eval.samples=1", "eval.max_tokens=128", "rollout.max_tokens=128",
       "rollout.kv_cache_memory_bytes=134217728", "trainer.max_steps=2", "trainer.save_every=1",
       "trainer.eval_every=1", "drafter.enabled=true", "drafter.num_speculative_tokens=1", "drafter.warmup_prompts=1",
       "drafter.warmup_steps=10", "drafter.final_steps=3", "drafter.final_prompts=2", "logging.wandb=true",
       "logging.wandb_mode=offline", "logging.progress=false"]


@pytest.fixture(scope="module")
def run(base_model_dir, tmp_path_factory, launch):
    """Two RL steps with a checkpoint (and its hf/ export) at each step, a held-out evaluation at 0, 1 and 2, an EAGLE
    drafter (one speculative token: an untrained drafter costs the least that way) and offline W&B; as small as it
    gets (4 rollouts a step, 8 held-out problems, 128 tokens): the numbers only have to be real, not good."""
    out = tmp_path_factory.mktemp("export") / "run"
    launch(*RUN, f"run.output_dir={out}")
    return out


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _row(card: str, name: str, a: float, b: float, fmt: str) -> None:
    assert f"| {name} | {fmt.format(a)} | {fmt.format(b)} |" in card, (name, card)


@pytest.mark.slow
def test_end_of_run_plot_card_checkpoints_and_wandb(run):
    summary = json.loads((run / "summary.json").read_text())
    b, a = summary["before"], summary["after"]
    assert (run / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    card = (run / "export" / "README.md").read_text()
    _row(card, "held-out accuracy (pass@1)", b["eval/acc"], a["eval/acc"], "{:.3f}")
    _row(card, "mean tokens", b["eval/len_mean"], a["eval/len_mean"], "{:.1f}")
    _row(card, "p90 tokens", b["eval/len_p90"], a["eval/len_p90"], "{:.1f}")
    assert "after (step 2)" in card and f'path = "{(run / "export").resolve()}"' in card
    # the final fit: drafter.final_steps steps on the last rollouts, after the last step's swap and before the export
    drafter = summary["drafter"]
    assert drafter["drafter/final_steps"] == 3 and drafter["version"] > _jsonl(run / "metrics.jsonl")[-1][
        "drafter/version"]
    assert drafter["drafter/final_rows"] == 2 * 2  # drafter.final_prompts fresh prompts, rollout.n each
    for step in (1, 2):
        hf = run / "checkpoints" / f"step_{step}" / "hf"
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in hf.iterdir()}
        assert (hf / "drafter" / "model.safetensors").is_file()
    media = next((run / "wandb").glob("offline-run-*")) / "files" / "media"
    assert list(media.glob("images/eval/pareto_*.png"))
    tables = sorted(media.glob("table/eval/samples_*.table.json"))
    assert len(tables) == 3  # one per evaluation
    table = json.loads(tables[0].read_text())
    col = table["columns"].index("completion")
    assert len(table["data"]) == 4 and all(r[col] for r in table["data"])


@pytest.mark.slow
def test_export_of_a_step_is_that_policy_and_serves_in_hf_and_vllm(run, tmp_path, run_cmd):
    out = tmp_path / "step1"
    # export and push in one command, to a Hub that cannot be reached: the export must be written and kept intact
    p = run_cmd([sys.executable, "launch.py", "export", f"run={run}", "step=1", f"out={out}", "push_to_hub=true",
                 "repo_id=laconic-test/tiny"], check=False, HF_TOKEN=SENTINEL, HF_ENDPOINT="http://127.0.0.1:9")
    assert p.returncode != 0 and "cannot reach the Hugging Face Hub" in p.stderr and "exported " in p.stdout
    assert SENTINEL not in p.stdout + p.stderr
    files = _snapshot(out)
    assert {"README.md", "pareto.png", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "drafter/config.json", "drafter/model.safetensors"} <= set(files)
    assert not any(SENTINEL.encode() in data for data in files.values())

    # the weights are the DeepSpeed state of step 1 (not step 2's)
    from safetensors.torch import load_file

    exported = load_file(str(out / "model.safetensors"))
    for step, same in ((1, True), (2, False)):
        ds = torch.load(next((run / "checkpoints" / f"step_{step}" / "policy" / "deepspeed").glob("*model_states.pt")),
                        weights_only=False)["module"]
        assert set(ds) == set(exported)
        assert all(torch.equal(ds[k], exported[k]) for k in exported) == same

    # the card shows the step-1 evaluation against the first one
    evals = _jsonl(run / "eval.jsonl")
    card = files["README.md"].decode()
    _row(card, "held-out accuracy (pass@1)", evals[0]["eval/acc"], evals[1]["eval/acc"], "{:.3f}")
    _row(card, "mean tokens", evals[0]["eval/len_mean"], evals[1]["eval/len_mean"], "{:.1f}")
    assert "after (step 1)" in card and 'snapshot_download("laconic-test/tiny")' in card

    hf_ids, vllm_ids = _greedy_hf_and_vllm(out, run)
    assert vllm_ids == hf_ids


def _greedy_hf_and_vllm(out: Path, run: Path, n_tokens: int = 48) -> tuple[list, list]:
    """Greedy continuations of three held-out prompts by transformers and by vLLM served with the card's drafter."""
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from recipes.tasks import TASKS

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    prompts = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in TASKS["arith"].make_splits(5, 3, 3)[1]]
    with torch.no_grad():
        hf = [model.generate(torch.tensor([x]), max_new_tokens=n_tokens, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(x):].tolist() for x in prompts]
    spec = serving_config(yaml.safe_load((run / "config.yaml").read_text()), str(out))
    llm = LLM(model=str(out), speculative_config=spec, dtype="float32", max_model_len=512, enforce_eager=True,
              enable_chunked_prefill=False, kv_cache_memory_bytes=64 * 2**20, seed=0)
    res = llm.generate([TokensPrompt(prompt_token_ids=x) for x in prompts],
                       SamplingParams(temperature=0.0, max_tokens=n_tokens), use_tqdm=False)
    got = [list(r.outputs[0].token_ids) for r in res]
    del llm
    gc.collect()
    return [h[:len(g)] for h, g in zip(hf, got)], got  # vLLM stops at EOS, HF was told not to


@pytest.mark.slow
def test_final_export_card_and_push_without_token(run, tmp_path, run_cmd):
    out = tmp_path / "final"
    home = tmp_path / "hf_home"
    p = run_cmd([sys.executable, "launch.py", "export", f"run={run}", f"out={out}", "push_to_hub=true",
                 "repo_id=laconic-test/tiny"], check=False, HF_TOKEN="", HF_HOME=str(home),
                HF_TOKEN_PATH=str(home / "token"))
    assert p.returncode != 0 and "no Hugging Face token found" in p.stderr and str(out) in p.stderr
    summary = json.loads((run / "summary.json").read_text())
    card = (out / "README.md").read_text()
    for name, key, fmt in (("held-out accuracy (pass@1)", "eval/acc", "{:.3f}"),
                           ("mean tokens", "eval/len_mean", "{:.1f}"), ("median tokens", "eval/len_median", "{:.1f}"),
                           ("truncation rate", "eval/truncated_frac", "{:.3f}")):
        _row(card, name, summary["before"][key], summary["after"][key], fmt)
    assert f"{summary['totals']['steps']} steps" in card and (out / "pareto.png").is_file()
    assert (out / "model.safetensors").read_bytes() == (run / "export" / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_eval_cli_compares_the_export_and_a_checkpoint(run, tmp_path, launch):
    """The final export and the step-1 checkpoint, each in a fresh engine, under the run's config (with a smaller
    held-out set and cap from the command line): one eval.jsonl record each, a plot, a few completions."""
    out = tmp_path / "eval"
    p = launch("eval", f"model={run}", f"compare={run}/checkpoints/step_1", f"out={out}", "max_tokens=96",
               "data.n_eval=4")
    recs = _jsonl(out / "eval.jsonl")
    assert [(r["label"], r["step"]) for r in recs] == [(run.name, None), (f"{run.name}/step_1", 1)]
    assert [r["model"] for r in recs] == [str(run / "export"), str(run / "checkpoints" / "step_1" / "hf")]
    for r in recs:
        assert METRIC_KEYS <= set(r) and r["eval/n"] == 4 and r["max_tokens"] == 96 and r["dataset"] == "arith"
        assert 0 <= r["eval/acc"] <= 1 and 0 < r["eval/len_mean"] <= 96 and r["eval/len_max"] <= 96
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    samples = _jsonl(out / "samples.jsonl")
    assert len(samples) == 8 and all(s["completion"] and s["prompt"].startswith("Start with") for s in samples)
    assert f"{run.name}/step_1" in p.stdout and "eval.jsonl and pareto.png in" in p.stdout
