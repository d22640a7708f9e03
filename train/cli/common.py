"""What every console entry point shares: errors to one stderr line and an exit code
(train.errors), the exit code left for harness-launch under Horovod, --help as exit 0."""

import os
import sys

from train import cluster, import_tensorflow_quietly
from train.errors import EXIT_FAILURE, EXIT_USAGE, HarnessError


def guarded(prog, body, argv):
    """Run body(argv); map HarnessError to its exit code and a one-line message.

    TensorFlow is imported first, with its C++ start-up banner held back, so that the
    one-line contract holds whatever the flags are."""
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


def run_main(prog, body, argv):
    """guarded(prog, body, argv) with argparse's exit for --help / --version as the exit
    code (argv None: sys.argv[1:]); returns the exit code."""

    def body_or_help(args):
        try:
            return body(args)
        except SystemExit as e:  # --help / --version: argparse printed and exits
            return e.code or 0

    return guarded(prog, body_or_help, sys.argv[1:] if argv is None else list(argv))
