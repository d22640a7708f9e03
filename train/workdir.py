"""The workdir: one run's directory, its layout, and its config.json.

    <workdir>/config.json     the run: its flags, identity (model, dataset, image shape,
                              classes), total steps and world size (this module)
    <workdir>/checkpoints/    numbered checkpoints and the `latest` pointer (train.checkpoint)
    <workdir>/metrics.jsonl   one JSON row per log line and event (train.monitor)
    <workdir>/tensorboard/    the same scalars for TensorBoard (train.monitor)
    <workdir>/export/         the seed's model formats at the end of a run (train.export)
    <workdir>/.lock           held by the training chief while it runs (train.workdir_lock)

Invariants: only the chief of a training run writes here (readers: harness-eval,
harness-export, the other workers); config.json is replaced durably (train.durable), so a
reader sees the old file or the new one. A workdir holds one run: its identity never
changes (check_same_run).
"""

import json
import os

from train import durable
from train.errors import UsageError, first_line

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
EXPORT_DIR = "export"
LOCK_FILE = ".lock"  # the training chief's lock (train.workdir_lock)
IDENTITY_KEYS = ("model", "dataset", "image_shape", "num_classes")


def checkpoint_dir(workdir):
    return os.path.join(workdir, CHECKPOINT_DIR)


def metrics_path(workdir):
    return os.path.join(workdir, METRICS_FILE)


def tensorboard_dir(workdir):
    return os.path.join(workdir, TENSORBOARD_DIR)


def export_dir(workdir):
    return os.path.join(workdir, EXPORT_DIR)


def is_run_dir(path):
    """A directory that looks like a harness-train workdir (config.json and checkpoints/)."""
    return (os.path.isfile(os.path.join(path, CONFIG_FILE))
            and os.path.isdir(checkpoint_dir(path)))


def read_config(workdir, *, required):
    """The run's config.json as a dict. required=False (training): None if the workdir
    has none yet; required=True (eval, export): UsageError naming what is missing."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        if not required:
            return None
        if not os.path.isdir(workdir):
            raise UsageError(f"--workdir {workdir}: no such directory")
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


def check_same_run(workdir, identity):
    """A workdir belongs to one model and dataset: refuse a silent mix."""
    previous = read_config(workdir, required=False)
    if previous is None:
        return
    for key in IDENTITY_KEYS:
        if key in previous and previous[key] != identity[key]:
            raise UsageError(f"--workdir {workdir} holds a run with {key}={previous[key]!r}, "
                             f"not {identity[key]!r}; use another --workdir")


def write_config(workdir, config, identity, *, total_steps, num_workers):
    """config.json: everything harness-eval/-export need to rebuild the run's model and
    optimizer exactly (num_workers: the world size that --scale-lr multiplied by)."""
    os.makedirs(workdir, exist_ok=True)
    durable.write_json(workdir, CONFIG_FILE, {**config.to_json(), **identity,
                                              "total_steps": total_steps,
                                              "num_workers": num_workers})
