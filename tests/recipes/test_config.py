"""Recipes load into the typed tree; bad keys, types and combinations fail fast and say what to fix."""
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.loader import ConfigError, available, load
from trainers.config import validate

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", available())
def test_every_recipe_loads_and_validates(name):
    cfg, text = load(name, [])
    validate(cfg, world_size=1)
    assert cfg.recipe == name and "rollout:" in text


def test_override_changes_value_with_type():
    cfg, _ = load("tiny_grpo", ["trainer.max_steps=3", "algo.clip_high=0.28", "logging.wandb=false"])
    assert cfg.trainer.max_steps == 3 and cfg.algo.clip_high == 0.28 and cfg.logging.wandb is False


def test_empty_override_is_an_empty_string_and_clears_a_recipes_value():
    cfg, _ = load("tiny_dler", ["drafter.method=lookup", "drafter.init="])
    assert cfg.drafter.init == "" and load("tiny_dler", [])[0].drafter.init == "cache"
    validate(cfg, world_size=1)
    with pytest.raises(ConfigError, match=r"trainer\.max_steps"):
        load("tiny_grpo", ["trainer.max_steps="])


def test_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match=r"trainer\.max_step.*did you mean 'trainer\.max_steps'"):
        load("tiny_grpo", ["trainer.max_step=3"])


def test_unknown_section_suggests_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'rollout'"):
        load("tiny_grpo", ["rollot.n=3"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"trainer\.max_steps"):
        load("tiny_grpo", ["trainer.max_steps=many"])


def test_unknown_key_in_recipe_file_names_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny_grpo\nalgo:\n  clip_hgih: 0.3\n")
    with pytest.raises(ConfigError, match=r"algo\.clip_hgih.*bad\.yaml.*did you mean 'algo\.clip_high'"):
        load(str(bad), [])


def test_malformed_yaml_names_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("trainer: [max_steps: 3\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load(str(bad), [])


def test_unknown_recipe_suggests():
    with pytest.raises(ConfigError, match="tiny_grpo"):
        load("tiny_grop", [])


@pytest.mark.parametrize("overrides,field", [
    (["trainer.prompts_per_step=6", "rollout.n=4", "trainer.micro_batch_size=16"], "trainer.micro_batch_size"),
    (["algo.aggregation=mean"], "algo.aggregation"),
    (["rollout.max_tokens=600", "rollout.max_model_len=512"], "rollout.max_tokens"),
    (["deepspeed.zero_stage=4"], "deepspeed.zero_stage"),
    (["rollout.temperature=0"], "rollout.temperature"),
    (["data.train_rows=-1"], "data.train_rows"),
    (["trainer.stop_at=30"], "trainer.stop_at"),
    (["trainer.stop_at=-1"], "trainer.stop_at"),
    (["tiny_base.tail_share=1.0"], "tiny_base.tail_share"),
    (["tiny_base.tail_rechecks=[3, 9]"], "tiny_base.tail_rechecks"),
    (["tiny_base.context=64"], "tiny_base.context"),
    (["rollout.lookup_min_n=5", "rollout.lookup_max_n=4"], "rollout.lookup_min_n"),
    (["rollout.lookup_min_n=0"], "rollout.lookup_min_n"),
    (["drafter.enabled=true", "drafter.method=lookup", "drafter.init=cache"], "drafter.init"),
    (["drafter.enabled=true", "drafter.method=lookup", "rollout.lookup_blend=true"], "rollout.lookup_blend"),
])
def test_impossible_combinations_name_fields(overrides, field):
    cfg, _ = load("tiny_grpo", overrides)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        validate(cfg, world_size=1)


def test_prompts_must_divide_over_ranks():
    cfg, _ = load("tiny_grpo", ["trainer.prompts_per_step=3"])
    with pytest.raises(ValueError, match="divisible by the 2 ranks"):
        validate(cfg, world_size=2)


def test_dynamic_sampling_with_a_stateful_reward_needs_one_rank():
    # the state is gathered after every sampling round, and with dynamic sampling ranks may run different numbers
    cfg, _ = load("tiny_hapo", ["trainer.dynamic_sampling=true"])
    validate(cfg, world_size=1)
    with pytest.raises(ValueError, match=r"dynamic_sampling=true with the stateful reward term\(s\) \['hapo'\]"):
        validate(cfg, world_size=2)
    validate(load("tiny_dler", [])[0], world_size=2)  # stateless terms: each rank samples as long as it needs


def test_launch_fails_on_unknown_key_before_heavy_imports():
    # fails before vLLM, DeepSpeed or any model is touched (that is what keeps it to seconds)
    code = ("import sys, launch\n"
            "try:\n    launch.main(['recipe=tiny_grpo', 'trainer.max_step=3'])\n"
            "except SystemExit as e:\n    print('MSG', e)\n"
            "print('HEAVY', sorted(m for m in ('vllm', 'deepspeed', 'transformers') if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "did you mean 'trainer.max_steps'" in p.stdout, p.stdout + p.stderr
    assert "HEAVY []" in p.stdout


def test_launch_cli_exit_code_and_message():
    p = subprocess.run([sys.executable, "launch.py", "recipe=tiny_grpo", "trainer.max_steps=lots"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "trainer.max_steps" in p.stderr


def test_train_rows_keeps_the_held_out_split():
    # tiny_hapo trains on a small set for several epochs; its held-out problems must be every other recipe's
    from recipes.tasks.data import load_task

    full, small = load_task(load("tiny_grpo", [])[0].data), load_task(load("tiny_hapo", [])[0].data)
    assert small.eval == full.eval and small.train == full.train[:96] and len(full.train) == 4000
    with pytest.raises(ValueError, match="data.train_rows=5000 is more than the 4000"):
        load_task(load("tiny_grpo", ["data.train_rows=5000"])[0].data)


def test_a_recipes_reward_terms_replace_its_bases():
    """tiny_shorterbetter's base (tiny_grpo) has a correctness term; ShorterBetter's reward already holds 2 c."""
    assert load("tiny_shorterbetter", [])[0].reward.terms == {"shorterbetter": 1.0}
    assert load("tiny_lcpo", [])[0].reward.terms == {"lcpo_exact": 1.0}
    assert load("tiny_hapo", [])[0].reward.terms == {"correctness": 1.0, "hapo": 1.0}
    assert load("tiny_grpo", ["reward.terms.kimi=0.5"])[0].reward.terms == {"correctness": 1.0, "kimi": 0.5}
    assert load("tiny_hapo", ["reward.terms={decs: 1.0}"])[0].reward.terms == {"decs": 1.0}


def test_prompt_template_needs_the_prompt():
    cfg, _ = load("tiny_grpo", ["data.prompt_template=Solve it."])
    with pytest.raises(ValueError, match=r"data\.prompt_template"):
        validate(cfg)


def test_unknown_decs_detector_fails_at_validation():
    cfg, _ = load("tiny_decs", ["reward.decs.detector=judge"])
    with pytest.raises(KeyError, match=r"reward\.decs\.detector='judge'"):
        validate(cfg)


@pytest.mark.parametrize("value, msg", [("-1", "must be >= 0"), ("512", "must be < rollout.max_model_len=512")])
def test_drafter_warmup_cap_is_checked_before_any_rollout(value, msg):
    cfg, _ = load("tiny_dler", [f"drafter.warmup_max_tokens={value}"])
    with pytest.raises(ValueError, match=rf"drafter\.warmup_max_tokens={value} {msg}"):
        validate(cfg)
    cfg, _ = load("tiny_dler", ["drafter.warmup_max_tokens=400"])
    validate(cfg)


@pytest.mark.parametrize("key", ["final_steps", "final_prompts"])
def test_drafter_final_fit_sizes_are_checked(key):
    cfg, _ = load("tiny_dler", [f"drafter.{key}=-1"])
    with pytest.raises(ValueError, match=rf"drafter\.{key}=-1 must be >= 0"):
        validate(cfg)


@pytest.mark.parametrize("key,value", [("final_min_gain", "-0.1"), ("final_min_gain", "1.0"),
                                       ("final_round_steps", "0")])
def test_drafter_final_fit_rule_is_checked(key, value):
    cfg, _ = load("tiny_dler", [f"drafter.{key}={value}"])
    with pytest.raises(ValueError, match=rf"drafter\.{key}={value}"):
        validate(cfg)
