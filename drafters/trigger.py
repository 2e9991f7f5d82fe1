"""When one rank's drafter trains in phase 8: every step, or only when its acceptance on the rollouts has drifted.

Training the drafter every RL step costs the step ``drafter.budget_s`` (and an export and a swap) whether or not the
drafter has fallen behind the policy. With ``drafter.train_when=drift`` the step's own rollouts are the measurement:
the acceptance the engine saw right after the drafter last changed is the reference, and the drafter trains again
only when a later step's acceptance falls below ``(1 - drafter.drift_tolerance)`` times it (the policy moved away
from what the drafter learned), or when nothing was measured (no speculation ran: the controller found it does not
pay, which training may change). A retraining that does not bring acceptance back does not lower the bar to the
new level: the reference after it is at least ``(1 - tolerance)`` times the one before (a drafter that trained into a
worse level would otherwise never train again), so unrecovered drift retrains again, each time against a bar lower
by that factor, until the level holds. Several ranks train in the rollout's idle windows, which cost no wall time, and a
background drafter trains on the idle core: neither asks the trigger.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DriftTrigger:
    tolerance: float  # relative fall of acceptance that counts as drift
    reference: float | None = None  # mean acceptance length of the first step after the drafter last changed
    floor: float = 0.0  # the least the next reference may be: (1 - tolerance) x the reference drift was found against

    def should_train(self, accept_len: float) -> bool:
        """Decide after a step's rollouts, whose mean acceptance length is ``accept_len`` (0 = no speculation);
        training changes the drafter, so the next step's acceptance (or the floor, if higher) becomes the new
        reference."""
        if accept_len <= 0:
            self.reference = None
            return True
        if self.reference is None:
            self.reference = max(accept_len, self.floor)
            return False
        if accept_len < (1.0 - self.tolerance) * self.reference:
            self.floor = (1.0 - self.tolerance) * self.reference
            self.reference = None
            return True
        return False
