"""Fault injection for tests: HARNESS_CHECKPOINT_FAULT=<phase> makes a save exit at that
phase as a crash there would (os._exit(86): no finally blocks, no cleanup).

The phases are the steps of the save sequence stated in train.checkpoint.manager.
"""

import os

from train.errors import UsageError

FAULT_ENV = "HARNESS_CHECKPOINT_FAULT"
FAULT_EXIT_CODE = 86
FAULT_PHASES = (
    "before_data",
    "after_data",
    "before_rename",
    "before_pointer",
    "after_pointer",
    "during_retention",
)


def fault_phase():
    """The test fault phase from the environment (None normally); a typo is a usage error."""
    phase = os.environ.get(FAULT_ENV) or None
    if phase is not None and phase not in FAULT_PHASES:
        raise UsageError(
            f"{FAULT_ENV}={phase!r} is not a phase; choose one of: {', '.join(FAULT_PHASES)}"
        )
    return phase


def crash_if(wanted, phase):
    # os._exit, not an exception: a real crash runs no finally blocks and no cleanup.
    if wanted == phase:
        os._exit(FAULT_EXIT_CODE)
