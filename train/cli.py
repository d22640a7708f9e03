"""Console entry points. Each main parses flags and calls a library function; errors
become one line on stderr and the exit code of train.errors (no traceback for bad input).
"""

import sys

from train import import_tensorflow_quietly
from train.errors import EXIT_OK, EXIT_USAGE, HarnessError


def guarded(prog, body, argv):
    """Run body(argv); map HarnessError to its exit code and a one-line message."""
    import_tensorflow_quietly()
    try:
        return body(argv)
    except HarnessError as e:
        kind = "error: " if e.exit_code == EXIT_USAGE else ""
        print(f"{prog}: {kind}{e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _train(argv):
    from train import config as config_lib

    config = config_lib.parse_args(argv)
    from train import run

    run.run(config)
    return EXIT_OK


def train_main(argv=None):
    return guarded("harness-train", _train, sys.argv[1:] if argv is None else argv)


def eval_main(argv=None):
    import_tensorflow_quietly()
    from train import evaluate

    return evaluate.eval_main(argv)


def export_main(argv=None):
    import_tensorflow_quietly()
    from train import evaluate

    return evaluate.export_main(argv)
