"""harness-train's flags: one per TrainConfig field, with its help text.

Every flag is read as a string and typed by train.config (the same path as a --config
file's values), so that a flag and a file key mean the same and fail the same way.
"""

import argparse
import dataclasses

from train.errors import ArgumentParser

STRATEGIES = ("auto", "default", "mirrored", "multiworker", "horovod")
OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "rmsprop")
PRECISIONS = ("auto", "fp32", "mixed_float16", "mixed_bfloat16")
DEFAULT_DATASET = "shapes10"  # built locally: the default needs no download
NONFINITE_POLICIES = ("stop", "skip")  # train.loops.nonfinite

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


def parser_for(config_class):
    """The parser of `config_class`'s fields (train.config.TrainConfig)."""
    parser = ArgumentParser(
        prog="harness-train",
        description="Train a Keras model on a TFDS dataset with tf.distribute or Horovod.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML or JSON file with the same keys as the flags")
    for field in dataclasses.fields(config_class):
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
