"""Console entry points. Each main parses flags and calls a library function; errors
become one line on stderr and the exit code of train.errors (no traceback for bad input).
"""

import os
import sys

from train import cluster, import_tensorflow_quietly
from train.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, HarnessError


def guarded(prog, body, argv):
    """Run body(argv); map HarnessError to its exit code and a one-line message."""
    import_tensorflow_quietly()
    code = EXIT_FAILURE
    try:
        code = body(argv)
    except HarnessError as e:
        kind = "error: " if e.exit_code == EXIT_USAGE else ""
        print(f"{prog}: {kind}{e}", file=sys.stderr, flush=True)
        code = e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    finally:
        record_exit_code(code)
    return code


def record_exit_code(code):
    """Under harness-launch --backend horovod: horovodrun reports any failing rank as 1,
    so each rank leaves its real code for the launcher (launch.plan.recorded_exit_code)."""
    directory = os.environ.get(cluster.EXIT_CODE_DIR_ENV)
    if not directory:
        return
    rank = os.environ.get("HOROVOD_RANK", os.environ.get(cluster.RANK_ENV, "0"))
    try:
        with open(os.path.join(directory, f"rank-{rank}.exit"), "w", encoding="utf-8") as f:
            f.write(f"{code}\n")
    except OSError:
        pass  # the launcher then reports horovodrun's own code


def _train(argv):
    from train import config as config_lib

    config = config_lib.parse_args(argv)
    from train import run

    run.run(config)
    return EXIT_OK


def train_main(argv=None):
    code = guarded("harness-train", _train, sys.argv[1:] if argv is None else argv)
    from train.distribute import base as distribute

    if distribute.teardown_may_hang():
        # Checkpoints, metrics and exports are closed and synced by now (train.run's
        # finally blocks); skip the teardown of TensorFlow's coordination service.
        sys.stdout.flush()
        sys.stderr.flush()
        distribute.leave_cluster(code)
        os._exit(code)
    return code


def eval_main(argv=None):
    import_tensorflow_quietly()
    from train.cli import evaluate

    return evaluate.eval_main(argv)


def export_main(argv=None):
    import_tensorflow_quietly()
    from train.cli import evaluate

    return evaluate.export_main(argv)
