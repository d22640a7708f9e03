"""`checkpoint`: stall S_N = (time with a checkpoint every N steps - time without) / time
without, for the harness's CheckpointManager (sync and async) and the seed's
keras.callbacks.ModelCheckpoint(save_freq=N) (whole model and weights only).

Harness windows (real Trainer + CheckpointManager, keep=3 as a run does), T steps:
    repeat T/N times: manager.save(step); train N steps (calls of min(N, 10) steps,
    as the Controller's schedule makes them); then manager.wait()
This is the Controller's cycle (train N, save) rotated so that an async write overlaps
the N steps it overlaps in a long run, inside the timed window; the final wait charges
a write that outlasts its N steps (the next save would wait for it anyway). The
baseline is the same loop without saves and with the same call size, so S_N is the
cost of checkpointing alone (the cost of 1-step calls is in `throughput`).
Keras windows: fit() with and without the callback (timed after the same re-warm).
blocking_ms is the time inside save() (harness; async: the snapshot, plus waiting for a
previous write still in flight) or inside the callback's batch-end hook (Keras), per save.
Every variant and baseline runs interleaved; S_N is the median of per-repetition ratios.
"""

import math
import os
import statistics
import time

import keras

from benchmarks import harness, measure

MODES = ("sync", "async", "keras_full", "keras_weights")


def run(opts, machine):
    return measure.each_model_and_batch(opts, measure_config)


def window_steps(steps, interval):
    """T for interval N: at least `steps`, a whole number of intervals."""
    return math.ceil(steps / interval) * interval


class Saves:
    """Blocking time per save of one variant, over all its timed windows."""

    def __init__(self):
        self.seconds, self.count = 0.0, 0

    def add(self, seconds, count=1):
        self.seconds += seconds
        self.count += count

    @property
    def ms_per_save(self):
        return 1000 * self.seconds / self.count if self.count else None


def harness_window(parts, steps, interval, manager, saves):
    """Seconds of `steps` steps, saving every `interval` steps (see the module doc)."""
    per_call = min(interval, parts.config.steps_per_call)
    began = time.perf_counter()
    for _ in range(steps // interval):
        at = time.perf_counter()
        manager.save(int(parts.trainer.step.numpy()))
        saves.add(time.perf_counter() - at)
        harness.trainer_steps(parts, interval, steps_per_call=per_call)
    manager.wait()
    return time.perf_counter() - began


class TimedModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """The seed's callback, with the time spent in its batch-end hook (the save) added up
    from batch `skip` on (the timed part of the fit window)."""

    def __init__(self, *args, skip, saves, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip, self.saves = skip, saves

    def on_train_batch_end(self, batch, logs=None):
        began = time.perf_counter()
        super().on_train_batch_end(batch, logs)
        if batch >= self.skip:
            self.saves.add(time.perf_counter() - began, count=0)


def keras_window(model, dataset, steps, rewarm, interval, path, saves):
    rewarm = max(1, rewarm)
    callback = TimedModelCheckpoint(path, save_freq=interval, skip=rewarm, saves=saves,
                                    save_weights_only=path.endswith(".weights.h5"))
    seconds = harness.fit_window(model, dataset, steps, rewarm, callbacks=[callback])
    saves.count += steps // interval  # any `steps` (a multiple of N) batches hold steps/N saves
    return seconds


def measure_config(opts, model, batch):
    from train import data, distribute, run as train_run

    sizes = opts.sizes
    workdir = os.path.join(opts.scratch, f"checkpoint-{model}-{batch}")
    config = harness.make_config(workdir=workdir, model=model, batch_size=batch,
                                 dataset=opts.dataset, data_dir=opts.data_dir)
    train_run.setup_numerics(config)
    backend = distribute.create("default")
    info = data.dataset_info(opts.dataset, opts.data_dir)
    parts = harness.build_harness(config, backend, info)
    keras_model, keras_data = harness.build_keras(config, backend, info)
    harness.warm_up(parts, keras_model, keras_data, sizes.warmup)
    managers = {mode: _manager(parts, os.path.join(workdir, mode), mode == "async")
                for mode in ("sync", "async")}
    variants, saves = _variants(opts, parts, managers, keras_model, keras_data, workdir)
    times, usage = measure.interleave(variants, sizes.reps, measure.ResourceSampler)
    extras = _sizes_and_restores(parts, managers, keras_model, workdir, 1 if opts.quick else 3)
    for manager in managers.values():
        manager.close()
    keras.backend.clear_session()
    base = dict(benchmark="checkpoint", model=model, batch_size=batch, steps=sizes.steps,
                warmup=sizes.warmup, reps=sizes.reps, steps_per_call=config.steps_per_call,
                filesystem=filesystem_of(workdir))
    return [_row(base, mode, n, times, usage, saves, extras, sizes.steps)
            for mode in MODES for n in opts.intervals]


def _manager(parts, directory, async_save):
    from train import checkpoint

    trainer = parts.trainer
    return checkpoint.CheckpointManager(
        directory=directory, is_chief=True, meta={"model": parts.config.model},
        state={"model": trainer.model.variables, "optimizer": trainer.optimizer.variables,
               "train": [trainer.step]},
        options=checkpoint.CheckpointOptions(keep=3, async_save=async_save))


def _variants(opts, parts, managers, keras_model, keras_data, workdir):
    sizes, spc = opts.sizes, parts.config.steps_per_call
    variants, saves = {}, {}
    for per_call in sorted({min(n, spc) for n in opts.intervals}):
        variants[f"none@{per_call}"] = lambda c=per_call: harness.trainer_steps(
            parts, sizes.steps, steps_per_call=c)
    variants["keras_none"] = lambda: harness.fit_window(
        keras_model, keras_data, sizes.steps, sizes.rewarm)
    paths = {"keras_full": os.path.join(workdir, "model.keras"),
             "keras_weights": os.path.join(workdir, "model.weights.h5")}
    for n in opts.intervals:
        steps = window_steps(sizes.steps, n)
        for mode in MODES:
            saves[mode, n] = record = Saves()
            if mode in managers:
                variants[f"{mode}@{n}"] = lambda n=n, s=steps, m=managers[mode], r=record: \
                    harness_window(parts, s, n, m, r)
            else:
                variants[f"{mode}@{n}"] = lambda n=n, s=steps, p=paths[mode], r=record: \
                    keras_window(keras_model, keras_data, s, sizes.rewarm, n, p, r)
    return variants, saves


def _sizes_and_restores(parts, managers, keras_model, workdir, repeats):
    """{mode: (bytes of one checkpoint, median restore ms)}."""
    out = {}
    for mode, manager in managers.items():
        manager.wait()
        step = manager.latest_step()
        path = manager.path_of(step)
        size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
        out[mode] = (size, _median_ms(manager.restore, repeats))
    full = os.path.join(workdir, "model.keras")
    weights = os.path.join(workdir, "model.weights.h5")
    out["keras_full"] = (os.path.getsize(full), _median_ms(
        lambda: keras.models.load_model(full), repeats))
    out["keras_weights"] = (os.path.getsize(weights), _median_ms(
        lambda: keras_model.load_weights(weights), repeats))
    return out


def _median_ms(function, repeats):
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(1000 * (time.perf_counter() - began))
    return statistics.median(times)


def _row(base, mode, n, times, usage, saves, extras, steps):
    keras_mode = mode.startswith("keras")
    baseline = "keras_none" if keras_mode else f"none@{min(n, base['steps_per_call'])}"
    name = f"{mode}@{n}"
    t_steps = window_steps(steps, n)
    per_step = [t / t_steps for t in times[name]]
    base_per_step = [t / steps for t in times[baseline]]
    stall = measure.summarize([a / b - 1 for a, b in zip(per_step, base_per_step)])
    size, restore_ms = extras[mode]
    return {**base, "variant": name, "mode": mode, "interval": n, "window_steps": t_steps,
            **measure.stat_fields("stall", stall, 4),
            "blocking_ms": _round(saves[mode, n].ms_per_save, 2),
            "saves_timed": saves[mode, n].count,
            "baseline_step_ms": round(1000 * statistics.median(base_per_step), 2),
            "step_ms": round(1000 * statistics.median(per_step), 2),
            "checkpoint_bytes": size, "restore_ms": round(restore_ms, 1),
            **measure.merge_usage(usage[name])}


def filesystem_of(path):
    """The type of the filesystem holding `path` (tmpfs makes fsync free: say so)."""
    path, best = os.path.realpath(path), ("", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                mount, kind = line.split()[1:3]
                if (path == mount or path.startswith(mount.rstrip("/") + "/")) and \
                        len(mount) > len(best[0]):
                    best = (mount, kind)
    except OSError:
        pass
    return best[1]


def _round(value, digits):
    return None if value is None else round(value, digits)
