"""The drift trigger: one rank's drafter trains only when the rollouts' acceptance fell, or nothing was measured."""
import pytest

from drafters.trigger import DriftTrigger

pytestmark = pytest.mark.unit


def test_trains_on_drift_and_re_measures_after_training():
    t = DriftTrigger(tolerance=0.1)
    assert t.should_train(3.0) is False and t.reference == 3.0  # the fresh drafter's level
    assert t.should_train(2.8) is False  # within 10%
    assert t.should_train(3.4) is False and t.reference == 3.0  # a better step does not move the reference
    assert t.should_train(2.69) is True and t.reference is None  # below 0.9 x 3.0: drift, train
    assert t.should_train(3.5) is False and t.reference == 3.5  # the retrained drafter's level
    assert t.should_train(0.0) is True  # no speculation ran: nothing measured, train


def test_a_retraining_that_does_not_recover_does_not_lower_the_bar_to_its_level():
    """Measured with the flagship: trained once on drift at 4.3 -> ~3.1, which became the reference, and the drafter
    never trained again. Now the bar after a retraining is at least 0.9 x the one before: unrecovered drift retrains,
    against a bar lower by 10% each time, until the level holds."""
    t = DriftTrigger(tolerance=0.1)
    assert t.should_train(4.3) is False
    assert t.should_train(3.8) is True  # below 0.9 x 4.3 = 3.87
    assert t.should_train(3.1) is False and t.reference == pytest.approx(3.87)  # the floor, not the worse level
    assert t.should_train(3.1) is True  # still below 0.9 x 3.87 = 3.483: train again
    assert t.should_train(3.2) is False and t.reference == pytest.approx(3.483)
    assert t.should_train(3.2) is False  # above 0.9 x 3.483 = 3.135: the level holds, no more training
    assert t.should_train(4.0) is False and t.reference == pytest.approx(3.483)


def test_trigger_settings_are_checked():
    from drafters.config import DrafterConfig, validate

    with pytest.raises(ValueError, match="drafter.train_when"):
        validate(DrafterConfig(train_when="sometimes"), 512)
    with pytest.raises(ValueError, match="drift_tolerance"):
        validate(DrafterConfig(train_when="drift", drift_tolerance=1.5), 512)
