"""harness-bench's command line: flags, dispatch to one module per subcommand, output.

    harness-bench throughput|input|checkpoint|resume|scaling|all [--quick]
        [--model cnn,resnet20] [--batch-size 256] [--json FILE] [--out DIR] ...

stdout gets the markdown table only; progress lines go to stderr. Exit 0 when every
variant was measured (skipped Horovod rows included), 1 when some variant failed (its
row says why), 2 on bad usage.
"""

import argparse
import concurrent.futures
import dataclasses
import os
import shlex
import sys
import tempfile
import time

from benchmarks import measure
from train.errors import ArgumentParser, UsageError

SUBCOMMANDS = ("throughput", "input", "checkpoint", "resume", "scaling")
HELP = {  # static: --help must not import TensorFlow
    "throughput": "images/sec of the harness loop against Keras model.fit",
    "input": "input pipeline throughput, headroom and input wait",
    "checkpoint": "checkpoint stall, blocking time, size and restore time",
    "resume": "time to resume and steps lost after SIGTERM and kill -9",
    "scaling": "multiworker and Horovod with 1 and 2 workers on localhost",
    "all": "every benchmark, in this order: " + ", ".join(SUBCOMMANDS),
}


@dataclasses.dataclass(frozen=True)
class Options:
    """Resolved flags: --quick picks smaller defaults; explicit flags always win."""

    quick: bool
    models: tuple  # empty: each subcommand's own default
    batch_sizes: tuple
    dataset: str
    data_dir: str
    sizes: measure.Sizes
    strategies: tuple
    replicas: int
    steps_per_call: tuple
    precisions: tuple  # throughput: the harness variants' --precision values
    builds: int  # throughput: builds per strategy behind mirrored's ÷ default
    intervals: tuple
    trials: int
    workers: tuple
    scratch: str  # a temporary directory for workdirs and checkpoints


def _ints(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _names(text):
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _common_flags(add):
    add("--quick", action="store_true", help="reduced sizes: every benchmark in < 3 minutes")
    add("--json", metavar="FILE", help='write {"machine": {...}, "results": [...]}')
    add("--out", metavar="DIR", help="write results.md and PNG plots into DIR")
    add("--model", type=_names, help="comma-separated models (default: cnn,resnet20 for "
        "throughput, cnn elsewhere; cnn with --quick)")
    add("--batch-size", type=_ints, help="comma-separated global batch sizes "
        "(default 256; 64 with --quick); scaling: the batch per worker")
    add("--dataset", default="shapes10", help="shapes10 (default) or synthetic")
    add("--data-dir", help="TFDS data dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")


def _size_flags(add):
    add("--steps", type=_positive, help="timed steps per repetition (default 100; 10 with "
        "--quick)")
    add("--warmup", type=_positive, help="warmup steps, excluded (default 10; 3 with --quick)")
    add("--reps", type=_positive, help="interleaved repetitions (default 5; 2 with --quick)")


def _throughput_flags(add):
    add("--strategies", type=_names, help="default and/or mirrored (default both)")
    add("--replicas", type=_positive, help="mirrored: replicas (default: every GPU; on a "
        "host without GPUs, as many logical CPU devices as usable CPUs, at least 2)")
    add("--steps-per-call", type=_ints, help="harness variants' steps per compiled call "
        "(default 10,1; 10 with --quick)")
    add("--precisions", type=_names, help="extra harness variants at these --precision "
        "values, besides the default's (default fp32,mixed_bfloat16; none with --quick); "
        "Keras fit stays float32")
    add("--builds", type=_positive, help="builds of the harness under each strategy behind "
        "mirrored's ÷ default (default 1); builds of one configuration differ by up to ~3%% "
        "here, so 4 or more to resolve 2%%")


def _checkpoint_flags(add):
    add("--intervals", type=_ints, help="save every N steps (default 1,10,100; 1,10 with "
        "--quick)")


def _resume_flags(add):
    add("--trials", type=_positive, help="trials per kill kind (default 3; 1 with --quick)")


def _scaling_flags(add):
    add("--workers", type=_ints, help="worker counts (default 1,2)")


# Each subcommand takes only the flags it reads (a flag of another one is an error, not
# silently ignored); `all` takes them all.
FLAGS = {
    "throughput": (_common_flags, _size_flags, _throughput_flags),
    "input": (_common_flags, _size_flags),
    "checkpoint": (_common_flags, _size_flags, _checkpoint_flags),
    "resume": (_common_flags, _resume_flags),
    "scaling": (_common_flags, _size_flags, _scaling_flags),
}
FLAGS["all"] = tuple(dict.fromkeys(f for adders in FLAGS.values() for f in adders))


def build_parser():
    parser = ArgumentParser(
        prog="harness-bench", description="Benchmarks of tf-harness against plain Keras "
        "fit, measured in one run: throughput, input, checkpoint, resume, scaling. "
        "`harness-bench SUBCOMMAND --help` lists the flags.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name in SUBCOMMANDS + ("all",):
        command = sub.add_parser(name, help=HELP[name], description=HELP[name])
        for adder in FLAGS[name]:
            adder(command.add_argument)
    return parser


def _module(name):
    import importlib

    return importlib.import_module(f"benchmarks.{'input_pipeline' if name == 'input' else name}")


def resolve(args, scratch):
    quick = args.quick
    given = lambda name: getattr(args, name, None)  # noqa: E731  (not every subcommand's)
    sizes = measure.QUICK if quick else measure.FULL
    sizes = dataclasses.replace(sizes, **{k: given(k) for k in ("steps", "warmup", "reps")
                                          if given(k)})
    from train import data

    return Options(
        quick=quick, models=args.model or (("cnn",) if quick else ()),
        batch_sizes=args.batch_size or ((64,) if quick else (256,)),
        dataset=args.dataset, data_dir=os.path.expanduser(args.data_dir or data.default_data_dir()),
        sizes=sizes, strategies=given("strategies") or ("default", "mirrored"),
        replicas=given("replicas") or _default_replicas(),
        steps_per_call=given("steps_per_call") or ((10,) if quick else (10, 1)),
        precisions=given("precisions") or (() if quick else ("fp32", "mixed_bfloat16")),
        builds=given("builds") or 1,
        intervals=given("intervals") or ((1, 10) if quick else (1, 10, 100)),
        trials=given("trials") or (1 if quick else 3), workers=given("workers") or (1, 2),
        scratch=scratch)


def _default_replicas():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return None  # MirroredStrategy over every local GPU
    return max(2, len(os.sched_getaffinity(0)))


def check(opts):
    """Refuse what would fail in every benchmark, before measuring anything."""
    from train import models
    from train.errors import UsageError

    unknown = [m for m in opts.models if m not in models.MODELS]
    if unknown:
        raise UsageError(f"--model: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(sorted(models.MODELS))}")
    from train.config import PRECISIONS

    wrong = [p for p in opts.precisions if p not in PRECISIONS]
    if wrong:
        raise UsageError(f"--precisions: unknown {', '.join(wrong)}; choose from "
                         f"{', '.join(PRECISIONS)}")
    bad = [s for s in opts.strategies if s not in ("default", "mirrored")]
    if bad or not opts.strategies:
        raise UsageError(f"--strategies: use default and/or mirrored, not {','.join(bad)}")


def progress(text):
    print(f"harness-bench: {text}", file=sys.stderr, flush=True)


SUBPROCESS_BASED = ("resume", "scaling")  # measure runs they start; the parent only waits


def run_one(name, opts, machine):
    began = time.perf_counter()
    progress(f"{name} ...")
    try:
        rows = _module(name).run(opts, machine)
    except Exception as exc:  # report it and go on with the other benchmarks
        rows = [{"benchmark": name, "variant": "error",
                 "error": f"{type(exc).__name__}: {exc}"[:800]}]
    for row in rows:
        row.setdefault("model", None)
        row.setdefault("batch_size", None)
    progress(f"{name} done in {time.perf_counter() - began:.0f} s")
    return rows


def run_subcommands(names, opts, machine):
    """Rows of every benchmark in `names`, in that order.

    --quick runs the subprocess-based benchmarks in a thread beside the in-process ones:
    most of their time is process start-up, and quick runs are a check that everything
    works (in < 3 minutes on a loaded 2-core machine), not figures. Full runs never
    overlap two benchmarks.
    """
    background = [n for n in names if n in SUBPROCESS_BASED] if opts.quick else []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(background))) as pool:
        later = {n: pool.submit(run_one, n, opts, machine) for n in background}
        done = {n: run_one(n, opts, machine) for n in names if n not in background}
        done.update({n: future.result() for n, future in later.items()})
    return [row for name in names for row in done[name]]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"harness-bench: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code
    from train import import_tensorflow_quietly

    import_tensorflow_quietly()
    from benchmarks import harness, report
    from benchmarks import machine as machine_lib
    from train.errors import HarnessError

    with tempfile.TemporaryDirectory(prefix="harness-bench-") as scratch:
        opts = resolve(args, scratch)
        try:
            check(opts)
            harness.prepare_dataset(opts.dataset, opts.data_dir)
        except HarnessError as exc:
            print(f"harness-bench: error: {exc}", file=sys.stderr)
            return 2
        began = time.perf_counter()
        machine = {**machine_lib.machine_info(quick=opts.quick),
                   "mode": "quick" if opts.quick else "full"}
        names = SUBCOMMANDS if args.command == "all" else (args.command,)
        results = run_subcommands(names, opts, machine)
        machine["total_seconds"] = round(time.perf_counter() - began, 1)
    command = "harness-bench " + shlex.join(argv)
    if args.json:
        report.write_json(args.json, {**machine, "command": command}, results)
    if args.out:
        report.write_outputs(args.out, machine, results, command)
    print(report.tables(machine, results), end="")
    return 1 if any(r["variant"] == "error" for r in results) else 0
