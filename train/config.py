"""One validated configuration per run.

Precedence: built-in defaults < `--config FILE` (YAML or JSON, same keys as the flags,
dashes or underscores) < flags given on the command line. Everything a user can get
wrong is checked here, before any workdir is touched; the few checks that need the
dataset (its existence, `--epochs` -> steps) happen in `train.run` before the workdir
too. Errors are `UsageError`s whose one-line message names the flag.
"""

import dataclasses
import json
import math
import os
import signal
from typing import Optional

from train.errors import UsageError, first_line
from train.flags import (  # noqa: F401  (the names of choices are part of this API)
    DEFAULT_DATASET,
    NONFINITE_POLICIES,
    OPTIMIZERS,
    PRECISIONS,
    STRATEGIES,
    parser_for,
)


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


def build_parser():
    return parser_for(TrainConfig)


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
        from_file = {
            k: _coerce(k, v, f"--config {config_path}")
            for k, v in load_config_file(config_path).items()
        }
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
    _check_length(config)
    _check_numbers(config)
    _check_names(config)
    _check_combinations(config)
    check_workdir(config.workdir)


def _check_length(config):
    if config.steps is not None and config.epochs is not None:
        raise UsageError("give --steps or --epochs, not both")
    if config.steps is None and config.epochs is None:
        raise UsageError("--steps or --epochs is required")


def _check_numbers(config):
    for name in ("steps", "epochs", "replicas", "keep_every_hours"):
        _positive(config, name, allow_none=True)
    for name in (
        "batch_size",
        "learning_rate",
        "steps_per_call",
        "checkpoint_every",
        "keep",
        "log_every",
        "max_nonfinite_skips",
    ):
        _positive(config, name)
    for name in ("eval_every", "warmup_steps", "seed"):
        _positive(config, name, allow_zero=True)


def _check_names(config):
    from train import models

    for name, choices in (
        ("strategy", STRATEGIES),
        ("optimizer", OPTIMIZERS),
        ("precision", PRECISIONS),
        ("on_nonfinite", NONFINITE_POLICIES),
        ("model", sorted(models.MODELS)),
    ):
        if getattr(config, name) not in choices:
            raise UsageError(
                f"--{name.replace('_', '-')}: unknown {name.replace('_', ' ')} "
                f"{getattr(config, name)!r}; choose one of: {', '.join(choices)}"
            )
    for name in config.preemption_signals:
        if not isinstance(getattr(signal, name, None), signal.Signals):
            raise UsageError(f"--preemption-signals: unknown signal {name!r}")


def _check_combinations(config):
    if config.horovod_fp16_allreduce and config.strategy not in ("horovod", "auto"):
        raise UsageError("--horovod-fp16-allreduce applies to --strategy horovod only")
    if config.replicas is not None and config.strategy not in ("mirrored", "auto"):
        raise UsageError("--replicas applies to --strategy mirrored only")
    if config.init_from is not None and not os.path.isfile(config.init_from):
        raise UsageError(f"--init-from {config.init_from}: no such file")


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
