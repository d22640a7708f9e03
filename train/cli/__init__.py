"""Console entry points. Each main parses flags and calls a library function; errors
become one line on stderr and the exit code of train.errors (no traceback for bad input).

    common.py      guarded (errors to exit codes), record_exit_code, run_main (--help)
    train.py       harness-train = python -m train
    eval.py        harness-eval = python -m train.cli.eval
    export.py      harness-export = python -m train.cli.export
    saved_run.py   a run's workdir read back: config.json, a checkpoint restored

setup.cfg's console scripts name the three mains below. They import their module when
called, so that importing this package stays cheap and `python -m train.cli.eval` runs
a module not yet imported.
"""


def train_main(argv=None):
    from train.cli import train

    return train.train_main(argv)


def eval_main(argv=None):
    from train.cli import eval as eval_cli

    return eval_cli.eval_main(argv)


def export_main(argv=None):
    from train.cli import export

    return export.export_main(argv)
