"""harness-eval (`python -m train.cli.eval`): evaluate any of the seed's four forms.

    harness-eval --workdir DIR [--step N]           a training checkpoint of a run
    harness-eval --weights FILE --model NAME        weights only (architecture rebuilt by name;
                                                    dtype policy from export.json beside it)
    harness-eval --model-file FILE                  a whole model (model.keras)
    harness-eval --saved-model DIR                  a SavedModel (its serving signature)

Every form of the same trained model gives the same loss and accuracy (train.export.evaluate).
`eval_main` only parses flags and prints; the work is in library functions that tests call
directly. Bad input: one line `harness-eval: error: ...` on stderr, exit 2. TensorFlow is
imported first (train.cli.common.guarded) with its C++ start-up banner held back, so that
the one-line contract holds whatever the flags are; flags and paths are then checked
before any model or dataset is loaded.
"""

import json
import os
import sys

from train import export  # imports no TensorFlow
from train.cli.common import run_main
from train.cli.saved_run import read_run_config, restore_checkpoint
from train.config import DEFAULT_DATASET
from train.errors import EXIT_OK, ArgumentParser, UsageError

DEFAULT_BATCH_SIZE = 256


def build_eval_parser():
    parser = ArgumentParser(
        prog="harness-eval",
        description="Evaluate a trained model on a split of a dataset (default: its test "
        "split). Give exactly one source: --workdir, --weights (with --model), "
        "--model-file or --saved-model.",
    )
    _add_source_flags(parser.add_argument_group("source (exactly one)"))
    _add_data_flags(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON object instead")
    return parser


def _add_source_flags(source):
    source.add_argument(
        "--workdir",
        help="a harness-train run directory: evaluate its latest valid checkpoint (or --step N)",
    )
    source.add_argument(
        "--weights", metavar="FILE", help="a weights-only file (model.weights.h5); needs --model"
    )
    source.add_argument("--model-file", metavar="FILE", help="a whole-model file (model.keras)")
    source.add_argument("--saved-model", metavar="DIR", help="a SavedModel directory")


def _add_data_flags(parser):
    parser.add_argument("--step", type=int, help="with --workdir: the checkpoint step")
    parser.add_argument("--model", help="with --weights: the architecture (cnn, resnet20)")
    parser.add_argument(
        "--dataset",
        help=f"dataset to evaluate on (default: the workdir's, else {DEFAULT_DATASET!r})",
    )
    parser.add_argument(
        "--data-dir",
        help="TFDS data directory (default: the workdir's, else "
        "$TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"evaluation batch size (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--split",
        help="any split the dataset has (default: the split training "
        "evaluates on: 'test', else 'validation')",
    )


def parse_eval_args(argv):
    """argv -> validated argparse.Namespace (or UsageError). Loads no model or dataset."""
    args = build_eval_parser().parse_args(argv)
    given = [
        flag
        for flag, value in (
            ("--workdir", args.workdir),
            ("--weights", args.weights),
            ("--model-file", args.model_file),
            ("--saved-model", args.saved_model),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise UsageError(
            "give exactly one of --workdir, --weights, --model-file, --saved-model"
            + (f" (got {', '.join(given)})" if given else "")
        )
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
    """Missing paths and wrong file types, before any model or dataset is loaded."""
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
    from train import data

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
        model, path = _load_file_form(args, info)
        source = os.path.basename(os.path.normpath(path))
    check_fits(model, info, path)
    result = export.evaluate(
        export.make_predict_fn(model),
        data.eval_dataset(
            info, data_dir, global_batch_size=args.batch_size, float_images=True, split=split
        ),
    )
    return {
        "source": source,
        "path": path,
        **({"step": step} if step is not None else {}),
        "dataset": dataset,
        "split": split,
        **result,
    }


def _load_file_form(args, info):
    """(model, path) of --weights, --model-file or --saved-model."""
    if args.weights is not None:
        path = args.weights
        policy = (export.read_export_meta(path) or {}).get("dtype_policy")
        return export.load_weights_model(
            path, args.model, info.image_shape, info.num_classes, dtype_policy=policy
        ), path
    if args.model_file is not None:
        return export.load_keras_model(args.model_file), args.model_file
    return export.load_saved_model(args.saved_model), args.saved_model


def check_fits(model, info, path):
    """The model must take the dataset's images and predict over its classes."""
    shape, classes = export.io_spec(model)
    if tuple(shape) != tuple(info.image_shape) or classes != info.num_classes:
        raise UsageError(
            f"{path}: the model takes {_shape(shape)} images and predicts {classes} classes; "
            f"dataset {info.name!r} has {_shape(info.image_shape)} images and "
            f"{info.num_classes} classes (pick the matching --dataset)"
        )


def _shape(shape):
    return "x".join(str(d) for d in shape)


def format_eval(result):
    return (
        f"eval  source={result['source']}  dataset={result['dataset']}  "
        f"split={result['split']}  examples={result['examples']}  "
        f"loss={result['loss']:.6f}  accuracy={result['accuracy']:.6f}"
    )


def _eval(argv):
    args = parse_eval_args(argv)
    result = run_eval(args)
    print(json.dumps(result, sort_keys=True) if args.json else format_eval(result), flush=True)
    return EXIT_OK


def eval_main(argv=None):
    """harness-eval; returns the exit code."""
    return run_main("harness-eval", _eval, argv)


if __name__ == "__main__":
    sys.exit(eval_main())
