"""One validated configuration per run.

Precedence: built-in defaults < `--config FILE` (YAML or JSON, same keys as the flags,
dashes or underscores) < flags given on the command line. Everything a user can get
wrong is checked here, before any workdir is touched; the few checks that need the
dataset (its existence, `--epochs` -> steps) happen in `train.run` before the workdir
too. Errors are `UsageError`s whose one-line message names the flag.
"""

import argparse
import dataclasses
import json
import math
import os
import signal
from typing import Optional

from train.errors import ArgumentParser, UsageError, first_line

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "horovod")
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "rmsprop")
PRECISIONS = ("auto", "fp32", "mixed_float16", "mixed_bfloat16")
DEFAULT_DATASET = "shapes10"  # built locally: the default needs no download
NONFINITE_POLICIES = ("stop", "skip")  # train.loops.nonfinite


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    workdir: str
    dataset: str = DEFAULT_DATASET
    data_dir: Optional[str] = None
    model: str = "cnn"
    steps: Optional[int] = 2000
    epochs: Optional[float] = None
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    warmup_steps: int = 0
    scale_lr: bool = False
    augment: bool = True
    strategy: str = "auto"
    horovod_fp16_allreduce: bool = False
    replicas: Optional[int] = None
    steps_per_call: int = 10
    checkpoint_every: int = 500
    keep: int = 3
    keep_every_hours: Optional[float] = None
    async_checkpoint: bool = False
    eval_every: int = 1000
    log_every: int = 100
    seed: int = 0
    deterministic: bool = False
    precision: str = "auto"
    jit_compile: bool = False
    init_from: Optional[str] = None
    preemption_signals: tuple = ("SIGTERM", "SIGUSR1")
    export: bool = True
    on_nonfinite: str = "stop"
    max_nonfinite_skips: int = 10

    def to_json(self):
        return dataclasses.asdict(self)


HELP = {
    "workdir": "run directory: checkpoints/, metrics.jsonl, tensorboard/, export/; "
               "rerunning resumes",
    "dataset": "'shapes10' (built-in, made locally), 'synthetic' (random tensors) or a TFDS "
               "image-classification dataset prepared in --data-dir (cifar10, mnist, ...)",
    "data_dir": "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    "model": "model from the registry: cnn (the seed article's CNN) or resnet20",
    "steps": "total training steps (global); a rerun with a larger value extends the run",
    "epochs": "train this many passes over the training split instead of --steps",
    "batch_size": "global batch size, split evenly across all replicas",
    "learning_rate": "peak learning rate",
    "optimizer": f"one of {', '.join(OPTIMIZERS)}",
    "warmup_steps": "linear learning-rate warmup over this many steps",
    "scale_lr": "multiply the learning rate by the number of workers (Horovod convention)",
    "augment": "random crop and flip of training images (--no-augment to disable)",
    "strategy": "auto picks multiworker under TF_CONFIG, mirrored with >1 GPU, else default",
    "horovod_fp16_allreduce": "horovod: all-reduce the gradients in float16 (half the traffic)",
    "replicas": "mirrored: number of GPUs to use, or of logical CPU devices on a host without GPUs",
    "steps_per_call": "training steps per compiled call (the loop still stops within one step "
                      "on preemption)",
    "checkpoint_every": "save a checkpoint every N steps (and always at the end)",
    "keep": "number of newest checkpoints kept",
    "keep_every_hours": "also keep one checkpoint per this many hours forever",
    "async_checkpoint": "write checkpoints in a background thread; training blocks only to "
                        "copy the variables to host memory",
    "eval_every": "evaluate on the test split every N steps (0: only at the end)",
    "log_every": "log a line and a metrics.jsonl row every N steps",
    "seed": "seed for initialisation, data order and augmentation",
    "deterministic": "bitwise-reproducible run: seeds everything and enables "
                     "tf.config.experimental.enable_op_determinism",
    "precision": f"one of {', '.join(PRECISIONS)}; auto: mixed_bfloat16 on hardware with "
                 "bfloat16 matrix units (AMX CPUs, Ampere+ GPUs), else fp32; mixed_float16 "
                 "uses dynamic loss scaling",
    "jit_compile": "compile the train step with XLA",
    "init_from": "start a new run from a whole-model file (model.keras): weights and optimizer",
    "preemption_signals": "comma-separated signals that request a save and exit 42",
    "export": "write export/ (model.keras, model.weights.h5, saved_model/) at the end",
    "on_nonfinite": "a step whose loss or gradients are NaN/Inf is never applied; stop: "
                    "end the run there with exit 1 (no save: the last good checkpoint stays "
                    "latest); skip: drop that step's update, count it, go on",
    "max_nonfinite_skips": "--on-nonfinite skip: stop as 'stop' after this many "
                           "consecutive non-finite steps",
}


def build_parser():
    parser = ArgumentParser(
        prog="harness-train",
        description="Train a Keras model on a TFDS dataset with tf.distribute or Horovod.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML or JSON file with the same keys as the flags")
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        default = field.default if field.default is not dataclasses.MISSING else None
        shown = "" if field.name == "workdir" else f" (default: {_show(default)})"
        text = HELP[field.name] + shown
        if field.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
        else:
            parser.add_argument(flag, metavar=field.name.upper(), help=text)
    return parser


def _show(value):
    if isinstance(value, tuple):
        return ",".join(value)
    return value


def load_config_file(path):
    """Read a YAML or JSON mapping; keys may use dashes or underscores."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read ({e.strerror})") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # json.JSONDecodeError, yaml.YAMLError
        raise UsageError(f"--config {path}: malformed ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


_FIELD_TYPES = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _coerce(name, value, source):
    """Convert a flag string or config value to the field's type; errors name the flag."""
    flag = "--" + name.replace("_", "-")
    field = _FIELD_TYPES.get(name)
    if field is None:
        raise UsageError(f"{source}: unknown key {name!r}")
    kind = str(field.type)
    if value is None:
        return None
    try:
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if "int" in kind:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if "float" in kind:
            return float(value)
        if "tuple" in kind:
            items = value if isinstance(value, (list, tuple)) else str(value).split(",")
            return tuple(str(s).strip() for s in items if str(s).strip())
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag}: invalid value {value!r}") from None


def parse_args(argv):
    """argv -> validated TrainConfig (or UsageError)."""
    args = vars(build_parser().parse_args(argv))
    values = {}
    config_path = args.pop("config", None)
    if config_path is not None:
        from_file = {k: _coerce(k, v, f"--config {config_path}")
                     for k, v in load_config_file(config_path).items()}
        values.update(_run_length(from_file, f"--config {config_path}: "))
    # A length given as a flag replaces the file's, whichever of the two each names.
    values.update(_run_length({k: _coerce(k, v, "flag") for k, v in args.items()}, ""))
    if not values.get("workdir"):
        raise UsageError("--workdir is required")
    config = TrainConfig(**values)
    validate(config)
    return config


def _run_length(values, where):
    """steps and epochs are one setting, the run's length: a source gives one of them.
    Returns values with the other one cleared, so that a later source overrides it."""
    given = [k for k in ("steps", "epochs") if values.get(k) is not None]
    if len(given) == 2:
        raise UsageError(f"{where}give --steps or --epochs, not both")
    if given:
        other = "epochs" if given[0] == "steps" else "steps"
        return {**values, other: None}
    return values


def _positive(config, name, allow_zero=False, allow_none=False):
    value = getattr(config, name)
    flag = "--" + name.replace("_", "-")
    if value is None:
        if allow_none:
            return
        raise UsageError(f"{flag} is required")
    if not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        need = "zero or more" if allow_zero else "positive"
        raise UsageError(f"{flag} must be {need}, got {value}")


def validate(config):
    """Check every field that can be checked without the dataset."""
    from train import models

    if config.steps is not None and config.epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    if config.steps is None and config.epochs is None:
        raise UsageError("--steps or --epochs is required")
    for name in ("steps", "epochs", "replicas", "keep_every_hours"):
        _positive(config, name, allow_none=True)
    for name in ("batch_size", "learning_rate", "steps_per_call", "checkpoint_every", "keep",
                 "log_every", "max_nonfinite_skips"):
        _positive(config, name)
    for name in ("eval_every", "warmup_steps", "seed"):
        _positive(config, name, allow_zero=True)
    for name, choices in (("strategy", STRATEGIES), ("optimizer", OPTIMIZERS),
                          ("precision", PRECISIONS), ("on_nonfinite", NONFINITE_POLICIES)):
        if getattr(config, name) not in choices:
            raise UsageError(f"--{name.replace('_', '-')}: unknown {name.replace('_', ' ')} "
                             f"{getattr(config, name)!r}; "
                             f"choose one of: {', '.join(choices)}")
    if config.model not in models.MODELS:
        raise UsageError(f"--model: unknown model {config.model!r}; "
                         f"choose one of: {', '.join(sorted(models.MODELS))}")
    if config.horovod_fp16_allreduce and config.strategy not in ("horovod", "auto"):
        raise UsageError("--horovod-fp16-allreduce applies to --strategy horovod only")
    if config.replicas is not None and config.strategy not in ("mirrored", "auto"):
        raise UsageError("--replicas applies to --strategy mirrored only")
    for name in config.preemption_signals:
        if not isinstance(getattr(signal, name, None), signal.Signals):
            raise UsageError(f"--preemption-signals: unknown signal {name!r}")
    if config.init_from is not None and not os.path.isfile(config.init_from):
        raise UsageError(f"--init-from {config.init_from}: no such file")
    check_workdir(config.workdir)


def check_workdir(workdir):
    """The workdir must be a directory we can create or write; nothing is created here."""
    path = os.path.abspath(workdir)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"--workdir {workdir}: exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"--workdir {workdir}: not writable")
        return
    parent = path
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"--workdir {workdir}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--workdir {workdir}: cannot create it under {parent} (not writable)")
