"""harness-train (`python -m train`): parse the flags (train.config), run (train.run)."""

import os
import sys

from train.cli.common import guarded
from train.errors import EXIT_OK


def _train(argv):
    from train import config as config_lib

    config = config_lib.parse_args(argv)
    from train import run

    run.run(config)
    return EXIT_OK


def train_main(argv=None):
    """harness-train; returns the exit code (or ends the process, see below)."""
    code = guarded("harness-train", _train, sys.argv[1:] if argv is None else argv)
    from train import distribute

    if distribute.teardown_may_hang():
        # Checkpoints, metrics and exports are closed and synced by now (train.run's
        # finally blocks); skip the teardown of TensorFlow's coordination service.
        sys.stdout.flush()
        sys.stderr.flush()
        distribute.leave_cluster(code)
        os._exit(code)
    return code
