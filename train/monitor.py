"""What a run reports: metrics.jsonl, a fixed-column log, TensorBoard, resources.

Only the chief writes files (metrics.jsonl, tensorboard/); every worker may print.
metrics.jsonl is append-only: one JSON object per line, flushed at once, so a crash
loses at most the line being written. After a crash the steps between the restored
checkpoint and the crash appear twice; the `resume` row between them says so (readers
keep the last row of each step).
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
import psutil
import tensorflow as tf

from train import workdir as workdir_lib
from train.errors import writing

HEADER = (
    f"{'step':>14}  {'epoch':>6}  {'loss':>8}  {'acc':>6}  {'lr':>9}  "
    f"{'img/s':>9}  {'steps/s':>8}  {'rss':>8}  {'cpu%':>5}  {'eta':>8}"
)


def _format_eta(seconds):
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Monitor:
    """Rows to metrics.jsonl and TensorBoard (chief only), lines to stdout."""

    def __init__(self, *, workdir, is_chief, total_steps, stream=None):
        self.is_chief = is_chief
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # first call only primes the counter
        self._file = None
        self._summary = None
        self._printed_header = False
        if is_chief:
            self._metrics_path = workdir_lib.metrics_path(workdir)
            self._events_dir = workdir_lib.tensorboard_dir(workdir)
            with writing(self._metrics_path):
                os.makedirs(workdir, exist_ok=True)
                self._file = open(self._metrics_path, "a", encoding="utf-8")
            with writing(self._events_dir, tf.errors.OpError):
                self._summary = tf.summary.create_file_writer(self._events_dir)

    def write(self, row):
        """Append one JSON row (chief only) and mirror scalars into TensorBoard."""
        row = {"wall_time": time.time(), **row}
        if self._file is None:
            return
        with writing(self._metrics_path):
            self._file.write(json.dumps(row, sort_keys=False) + "\n")
            self._file.flush()
        step = row.get("step")
        if self._summary is not None and step is not None:
            with (
                writing(self._events_dir, tf.errors.OpError),
                self._summary.as_default(step=int(step)),
            ):
                for key, value in row.items():
                    if key in ("step", "wall_time", "event"):
                        continue
                    if isinstance(value, (int, float)):
                        tf.summary.scalar(key, value)

    def resources(self):
        return {
            "rss_bytes": self.process.memory_info().rss,
            "cpu_percent": self.process.cpu_percent(None),
        }

    def log_train(
        self,
        *,
        step,
        epoch,
        loss,
        accuracy,
        learning_rate,
        images_per_sec,
        steps_per_sec,
        nonfinite=0,
    ):
        row = {
            "step": step,
            "epoch": epoch,
            "loss": loss,
            "accuracy": accuracy,
            "learning_rate": learning_rate,
            "images_per_sec": images_per_sec,
            "steps_per_sec": steps_per_sec,
            **self.resources(),
        }
        if nonfinite:  # steps of the interval skipped as non-finite (train.loops.nonfinite)
            row["nonfinite"] = nonfinite
        self.write(row)
        eta = (self.total_steps - step) / steps_per_sec if steps_per_sec > 0 else None
        self.print_line(
            f"{step:>7d}/{self.total_steps:<6d}  {epoch:6.2f}  {loss:8.4f}  {accuracy:6.4f}  "
            f"{learning_rate:9.3g}  {images_per_sec:9.1f}  {steps_per_sec:8.2f}  "
            f"{row['rss_bytes'] / 2**20:6.0f}MB  {row['cpu_percent']:5.0f}  {_format_eta(eta):>8}"
            + (f"  nonfinite={nonfinite}" if nonfinite else ""),
            header=True,
        )
        return row

    def log_eval(self, *, step, loss, accuracy, examples):
        self.write(
            {"step": step, "eval_loss": loss, "eval_accuracy": accuracy, "eval_examples": examples}
        )
        self.print_line(
            f"{'eval':>14}  step {step}  eval_loss {loss:.4f}  "
            f"eval_accuracy {accuracy:.4f}  ({examples} examples)"
        )

    def event(self, name, **fields):
        self.write({"event": name, **fields})
        details = "  ".join(f"{k}={v}" for k, v in fields.items())
        self.print_line(f"{name:>14}  {details}")

    def print_line(self, text, header=False):
        if header and not self._printed_header:
            print(HEADER, file=self.stream, flush=True)
            self._printed_header = True
        print(text, file=self.stream, flush=True)

    def close(self):
        file, summary, self._file, self._summary = self._file, self._summary, None, None
        if file is not None:
            with writing(self._metrics_path):
                file.close()
        if summary is not None:
            with writing(self._events_dir, tf.errors.OpError):
                summary.close()


def variables_digest(variables):
    """sha256 over the bytes of every variable, in order (first 16 hex digits)."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(np.ascontiguousarray(np.asarray(variable)).tobytes())
    return digest.hexdigest()[:16]


def process_age_s():
    """Seconds since this process started, to about 10 ms.

    Not psutil's create_time(): that adds the boot time, which Linux gives in whole
    seconds (/proc/stat btime), so it can be up to a second off. Here both ends are
    counted from boot: uptime now minus the process's start tick (/proc/self/stat).
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - psutil.Process().create_time()
