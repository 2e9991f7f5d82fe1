"""The one registry implementation (laconic.registry) that rewards and trainers share."""
import pytest

from laconic.registry import Registry, one_of, suggest

pytestmark = pytest.mark.unit


def test_duplicates_are_rejected_naming_the_first_module():
    reg = Registry("widget")
    reg.register("a")(len)
    with pytest.raises(ValueError, match="widget 'a' is already registered by builtins"):
        reg.add("a", max)


def test_unknown_name_lists_the_choices_and_suggests_the_closest():
    reg = Registry("advantage estimator")
    for name in ("grpo", "dr_grpo", "rloo"):
        reg.add(name, len)
    with pytest.raises(KeyError, match=r"algo.advantage='gpro' is not a registered advantage estimator; choose from "
                                       r"\['dr_grpo', 'grpo', 'rloo'\]; did you mean 'grpo'\?"):
        reg.get_or_raise("gpro", "algo.advantage")
    assert reg.get_or_raise("rloo", "algo.advantage") is len


def test_suggest_stays_silent_when_nothing_is_close():
    assert suggest("zzzz", ["grpo", "rloo"]) == ""
    with pytest.raises(ValueError) as e:
        one_of("algo.whiten", "qqq", ("token", "sequence"))
    assert "did you mean" not in str(e.value) and "['sequence', 'token']" in str(e.value)


def test_rewards_and_trainers_use_it():
    from rewards.registry import TERMS, TRANSFORMS
    from rewards.verifiers import VERIFIERS
    from trainers.algo.advantages import ADVANTAGE
    from trainers.algo.aggregation import AGGREGATIONS
    from trainers.algo.losses import KL, LOSS, SAMPLER_CORRECTION

    for reg in (TERMS, TRANSFORMS, VERIFIERS, ADVANTAGE, AGGREGATIONS, KL, LOSS, SAMPLER_CORRECTION):
        assert isinstance(reg, Registry) and len(reg) > 0


def test_misspelt_reward_term_is_a_config_error_with_a_suggestion():
    from recipes.loader import load
    from trainers.config import validate

    cfg, _ = load("tiny_grpo", ["reward.terms={correctnes: 1.0}"])
    with pytest.raises(KeyError, match=r"unknown term\(s\) \['correctnes'\].*did you mean 'correctness'\?"):
        validate(cfg)
