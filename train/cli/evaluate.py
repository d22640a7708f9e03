"""harness-eval and harness-export: evaluate or export any of the seed's four forms.

    harness-eval --workdir DIR [--step N]           a training checkpoint of a run
    harness-eval --weights FILE --model NAME        weights only (architecture rebuilt by name;
                                                    dtype policy from export.json beside it)
    harness-eval --model-file FILE                  a whole model (model.keras)
    harness-eval --saved-model DIR                  a SavedModel (its serving signature)
    harness-export --workdir DIR --format {keras,weights,saved_model,all} [--step N] [--out DIR]

Every form of the same trained model gives the same loss and accuracy (train.export.evaluate).
The `main` functions only parse flags and print; the work is in library functions that
tests call directly. Bad input: one line `harness-eval: error: ...` on stderr, exit 2.
TensorFlow is imported first (train.cli), with its C++ start-up banner held back, so
that the one-line contract holds whatever the flags are.
"""

import dataclasses
import json
import os
import sys
import types

from train.errors import EXIT_OK, ArgumentParser, UsageError, first_line

DEFAULT_DATASET = "shapes10"
DEFAULT_BATCH_SIZE = 256
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"
EXPORT_FORMATS = ("keras", "weights", "saved_model")


# --------------------------------------------------------------------------- harness-eval


def build_eval_parser():
    parser = ArgumentParser(
        prog="harness-eval",
        description="Evaluate a trained model on a split of a dataset (default: its test split). Give exactly one "
                    "source: --workdir, --weights (with --model), --model-file or --saved-model.")
    source = parser.add_argument_group("source (exactly one)")
    source.add_argument("--workdir", help="a harness-train run directory: evaluate its latest "
                                          "valid checkpoint (or --step N)")
    source.add_argument("--weights", metavar="FILE",
                        help="a weights-only file (model.weights.h5); needs --model")
    source.add_argument("--model-file", metavar="FILE",
                        help="a whole-model file (model.keras)")
    source.add_argument("--saved-model", metavar="DIR", help="a SavedModel directory")
    parser.add_argument("--step", type=int, help="with --workdir: the checkpoint step")
    parser.add_argument("--model", help="with --weights: the architecture (cnn, resnet20)")
    parser.add_argument("--dataset", help="dataset to evaluate on (default: the workdir's, "
                                          f"else {DEFAULT_DATASET!r})")
    parser.add_argument("--data-dir", help="TFDS data directory (default: the workdir's, else "
                                           "$TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"evaluation batch size (default: {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--split",
                        help="any split the dataset has (default: the split training "
                             "evaluates on: 'test', else 'validation')")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    return parser


def parse_eval_args(argv):
    """argv -> validated argparse.Namespace (or UsageError). Touches no TensorFlow."""
    args = build_eval_parser().parse_args(argv)
    given = [flag for flag, value in (("--workdir", args.workdir), ("--weights", args.weights),
                                      ("--model-file", args.model_file),
                                      ("--saved-model", args.saved_model)) if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --workdir, --weights, --model-file, --saved-model"
                         + (f" (got {', '.join(given)})" if given else ""))
    if args.weights is not None and not args.model:
        raise UsageError("--weights needs --model NAME (the architecture the weights belong to)")
    if args.model and args.weights is None:
        raise UsageError("--model goes with --weights only")
    if args.step is not None and args.workdir is None:
        raise UsageError("--step goes with --workdir only")
    if args.step is not None and args.step < 0:
        raise UsageError(f"--step must be zero or more, got {args.step}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be positive, got {args.batch_size}")
    _check_source_path(args)
    return args


def _check_source_path(args):
    """Missing paths and wrong file types, before TensorFlow is imported."""
    from train import export  # imports no TensorFlow

    if args.workdir is not None:
        read_run_config(args.workdir)
    elif args.weights is not None:
        export.check_kind(args.weights, "hdf5", "--weights")
    elif args.model_file is not None:
        export.check_kind(args.model_file, "keras", "--model-file")
    else:
        export.check_kind(args.saved_model, "saved_model", "--saved-model")


def run_eval(args):
    """Evaluate the source named by parsed `args`; returns the result dict."""
    from train.data import pipeline as data
    from train import export

    config = read_run_config(args.workdir) if args.workdir is not None else {}
    dataset = args.dataset or config.get("dataset") or DEFAULT_DATASET
    data_dir = args.data_dir or config.get("data_dir")
    info = data.dataset_info(dataset, data_dir)
    split = args.split or info.eval_split
    info.split_size(split)  # a split the dataset lacks is bad input, before any loading
    step = None
    if args.workdir is not None:
        restored = restore_checkpoint(args.workdir, step=args.step)
        model, step, path = restored.model, restored.step, restored.path
        source = f"ckpt-{step}"
    else:
        if args.weights is not None:
            path = args.weights
            policy = (export.read_export_meta(path) or {}).get("dtype_policy")
            model = export.load_weights_model(path, args.model, info.image_shape,
                                              info.num_classes, dtype_policy=policy)
        elif args.model_file is not None:
            path = args.model_file
            model = export.load_keras_model(path)
        else:
            path = args.saved_model
            model = export.load_saved_model(path)
        source = os.path.basename(os.path.normpath(path))
    check_fits(model, info, path)
    result = export.evaluate(export.make_predict_fn(model),
                             data.eval_dataset(info, data_dir, global_batch_size=args.batch_size,
                                               float_images=True, split=split))
    return {"source": source, "path": path, **({"step": step} if step is not None else {}),
            "dataset": dataset, "split": split, **result}


def check_fits(model, info, path):
    """The model must take the dataset's images and predict over its classes."""
    from train import export

    shape, classes = export.io_spec(model)
    if tuple(shape) != tuple(info.image_shape) or classes != info.num_classes:
        raise UsageError(
            f"{path}: the model takes {_shape(shape)} images and predicts {classes} classes; "
            f"dataset {info.name!r} has {_shape(info.image_shape)} images and "
            f"{info.num_classes} classes (pick the matching --dataset)")


def _shape(shape):
    return "x".join(str(d) for d in shape)


def format_eval(result):
    return (f"eval  source={result['source']}  dataset={result['dataset']}  "
            f"split={result['split']}  examples={result['examples']}  "
            f"loss={result['loss']:.6f}  accuracy={result['accuracy']:.6f}")


def _eval(argv):
    args = parse_eval_args(argv)
    result = run_eval(args)
    print(json.dumps(result, sort_keys=True) if args.json else format_eval(result), flush=True)
    return EXIT_OK


def eval_main(argv=None):
    """harness-eval; returns the exit code."""
    return _main("harness-eval", _eval, argv)


# --------------------------------------------------------------------------- harness-export


def build_export_parser():
    parser = ArgumentParser(
        prog="harness-export",
        description="Export a training checkpoint of a run as the seed's formats: model.keras "
                    "(whole model with optimizer state), model.weights.h5 (weights only), "
                    "saved_model/ (SavedModel for serving). Single process; run it where the "
                    "chief writes.")
    parser.add_argument("--workdir", required=True, help="a harness-train run directory")
    parser.add_argument("--format", required=True, choices=[*EXPORT_FORMATS, "all"],
                        help="what to write; 'all' writes the three")
    parser.add_argument("--step", type=int,
                        help="checkpoint step to export (default: the latest valid one)")
    parser.add_argument("--out", help="output directory (default: WORKDIR/export/ckpt-STEP, "
                                      "next to the end-of-training export in WORKDIR/export; "
                                      "artifacts already there are replaced atomically)")
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
    from train import export

    restored = restore_checkpoint(args.workdir, step=args.step)
    out = args.out or os.path.join(args.workdir, EXPORT_DIR, f"ckpt-{restored.step}")
    formats = EXPORT_FORMATS if args.format == "all" else (args.format,)
    meta = {**restored.identity, "step": restored.step,
            "workdir": os.path.abspath(args.workdir)}  # + model, dtype_policy by export_model
    written = export.export_model(restored.model, restored.optimizer, out, formats=formats,
                                  meta=meta)
    return {"step": restored.step, "out": out, "written": written}


def _export(argv):
    args = parse_export_args(argv)
    result = run_export(args)
    formats = ",".join(f for f in EXPORT_FORMATS if f in result["written"])
    print(f"export  step={result['step']}  formats={formats}  out={result['out']}", flush=True)
    return EXIT_OK


def export_main(argv=None):
    """harness-export; returns the exit code."""
    return _main("harness-export", _export, argv)


# --------------------------------------------------------------------------- shared


def _main(prog, body, argv):
    from train.cli import guarded

    def body_or_help(args):
        try:
            return body(args)
        except SystemExit as e:  # --help / --version: argparse printed and exits
            return e.code or 0
    return guarded(prog, body_or_help, sys.argv[1:] if argv is None else list(argv))


def read_run_config(workdir):
    """The run's config.json as a dict; UsageError if the workdir is not a harness run."""
    if not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir}: no such directory")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"--workdir {workdir}: no {CONFIG_FILE} (not a harness-train run "
                         "directory, or its training never started)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable run config ({first_line(e)})") from None
    if not isinstance(config, dict) or not config.get("model"):
        raise UsageError(f"{path}: run config without a 'model'")
    return config


@dataclasses.dataclass
class Restored:
    model: object
    optimizer: object
    step: int
    identity: dict  # model, dataset, image_shape, num_classes
    path: str  # the checkpoint's directory


def restore_checkpoint(workdir, *, step=None):
    """Rebuild the run's model and optimizer from config.json and restore a checkpoint.

    The state mirrors train.run's: {"model": model.variables, "optimizer":
    optimizer.variables, "train": [step]}, the optimizer built from the run's config
    (name, learning rate, warmup, precision) so that its variables match. Reads only.
    """
    import tensorflow as tf

    from train import models, optimizers, precision
    from train.checkpoint import manager as checkpoint
    from train import export

    config = read_run_config(workdir)
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    identity = _identity(config)
    train_config = _train_config(config)
    # train.run records the resolved precision; "auto" comes only from hand-made configs.
    with export.dtype_policy_scope(precision.keras_policy(train_config.precision)):
        model = models.build(identity["model"], identity["image_shape"],
                             identity["num_classes"])
    optimizer = optimizers.build(train_config, total_steps=config.get("total_steps") or 1)
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    if not os.path.isdir(directory):
        raise UsageError(f"--workdir {workdir}: no checkpoints (no {CHECKPOINT_DIR}/ directory)")
    # is_chief=False: this manager only reads (no leftover cleanup, no mkdir).
    with checkpoint.CheckpointManager(
            directory=directory, is_chief=False,
            state={"model": model.variables, "optimizer": optimizer.variables,
                   "train": [step_var]}) as manager:
        restored = manager.restore(step=step)
        if restored is None:
            raise UsageError(f"--workdir {workdir}: no checkpoint in {directory}")
        path = manager.path_of(restored)
    return Restored(model=model, optimizer=optimizer, step=int(restored), identity=identity,
                    path=path)


def _identity(config):
    """model, dataset, image_shape, num_classes of the run (config.json, else the dataset)."""
    identity = {k: config.get(k) for k in ("model", "dataset", "image_shape", "num_classes")}
    if identity["image_shape"] is None or identity["num_classes"] is None:
        from train.data import pipeline as data

        info = data.dataset_info(identity["dataset"] or DEFAULT_DATASET, config.get("data_dir"))
        identity.update(dataset=info.name, image_shape=list(info.image_shape),
                        num_classes=info.num_classes)
    return identity


def _train_config(config):
    """config.json -> the TrainConfig fields train.optimizers.build reads (with defaults)."""
    from train.config import OPTIMIZERS, PRECISIONS, TrainConfig

    for key, choices in (("optimizer", OPTIMIZERS), ("precision", PRECISIONS)):
        if key in config and config[key] not in choices:
            raise UsageError(f"run config: unknown {key} {config[key]!r}")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    return types.SimpleNamespace(**{**defaults, **config})
