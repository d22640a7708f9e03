"""harness-export (`python -m train.cli.export`): a training checkpoint of a run as the
seed's formats (train.export).

    harness-export --workdir DIR --format {keras,weights,saved_model,all} [--step N] [--out DIR]

`export_main` only parses flags and prints; run_export does the work. Bad input: one line
`harness-export: error: ...` on stderr, exit 2 (train.cli.common.guarded).
"""

import os
import sys

from train import export  # imports no TensorFlow
from train.cli.common import run_main
from train.cli.saved_run import read_run_config, restore_checkpoint
from train.errors import EXIT_OK, ArgumentParser, UsageError

EXPORT_DIR = "export"


def build_export_parser():
    parser = ArgumentParser(
        prog="harness-export",
        description="Export a training checkpoint of a run as the seed's formats: model.keras "
        "(whole model with optimizer state), model.weights.h5 (weights only), "
        "saved_model/ (SavedModel for serving). Single process; run it where the "
        "chief writes.",
    )
    parser.add_argument("--workdir", required=True, help="a harness-train run directory")
    parser.add_argument(
        "--format",
        required=True,
        choices=[*export.FORMATS, "all"],
        help="what to write; 'all' writes the three",
    )
    parser.add_argument(
        "--step", type=int, help="checkpoint step to export (default: the latest valid one)"
    )
    parser.add_argument(
        "--out",
        help="output directory (default: WORKDIR/export/ckpt-STEP, "
        "next to the end-of-training export in WORKDIR/export; "
        "artifacts already there are replaced atomically)",
    )
    return parser


def parse_export_args(argv):
    args = build_export_parser().parse_args(argv)
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be zero or more, got {args.step}")
    read_run_config(args.workdir)
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    return args


def run_export(args):
    """Restore the checkpoint named by `args` and export it; returns {format: path, ...}."""
    restored = restore_checkpoint(args.workdir, step=args.step)
    out = args.out or os.path.join(args.workdir, EXPORT_DIR, f"ckpt-{restored.step}")
    formats = export.FORMATS if args.format == "all" else (args.format,)
    meta = {
        **restored.identity,
        "step": restored.step,
        "workdir": os.path.abspath(args.workdir),
    }  # + model, dtype_policy by export_model
    written = export.export_model(
        restored.model, restored.optimizer, out, formats=formats, meta=meta
    )
    return {"step": restored.step, "out": out, "written": written}


def _export(argv):
    args = parse_export_args(argv)
    result = run_export(args)
    formats = ",".join(f for f in export.FORMATS if f in result["written"])
    print(f"export  step={result['step']}  formats={formats}  out={result['out']}", flush=True)
    return EXIT_OK


def export_main(argv=None):
    """harness-export; returns the exit code."""
    return run_main("harness-export", _export, argv)


if __name__ == "__main__":
    sys.exit(export_main())
