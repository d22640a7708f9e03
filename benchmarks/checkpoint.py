"""`checkpoint`: stall S_N = (time with a checkpoint every N steps - time without) / time
without, for the harness's CheckpointManager (sync and async) and the seed's
keras.callbacks.ModelCheckpoint(save_freq=N) (whole model and weights only).

Harness (real Trainer + CheckpointManager, keep=3 as a run does): paired blocks of
B = min(N, 10) steps, many pairs, in alternating order (AB, BA, ...):
    with:    manager.save(step); train B steps; manager.wait()
    without: train B steps
A save's cost is the median over pairs of (with - without): the blocking snapshot plus
whatever the background write takes from the B steps it overlaps (the wait charges a
write that outlasts them). S_N = cost / (N x step time). Adjacent blocks share the
machine's state, so the paired difference resolves a few milliseconds where whole
windows with and without saves differ by 2-3% from noise alone; a save every 100 steps
costs the same as one every 10 once its write ends within 10 steps. stall_se is the
standard error of that median.
Keras windows: fit() with and without the callback (timed after the same re-warm),
interleaved; S_N is the median of per-repetition ratios.
blocking_ms is the time inside save() (harness; async: the snapshot, plus waiting for a
previous write still in flight) or inside the callback's batch-end hook (Keras), per save.
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


BLOCK = 10  # steps after a save that its async write is allowed (and charged) to overlap


def harness_pairs(parts, manager, interval, pairs, saves):
    """([seconds of blocks with a save], [seconds without]), paired (see the module doc)."""
    block = min(interval, BLOCK)
    per_call = min(block, parts.config.steps_per_call)
    timed = {True: [], False: []}
    for i in range(pairs):
        for with_save in ((True, False) if i % 2 == 0 else (False, True)):
            step = int(parts.trainer.step.numpy())  # untimed: the Controller reads it anyway
            began = time.perf_counter()
            if with_save:
                manager.save(step)
                saves.add(time.perf_counter() - began)
            harness.trainer_steps(parts, block, steps_per_call=per_call)
            if with_save:
                manager.wait()
            timed[with_save].append(time.perf_counter() - began)
    return timed[True], timed[False]


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
    from train import assemble, data, distribute

    sizes = opts.sizes
    workdir = os.path.join(opts.scratch, f"checkpoint-{model}-{batch}")
    config = harness.make_config(workdir=workdir, model=model, batch_size=batch,
                                 dataset=opts.dataset, data_dir=opts.data_dir)
    config = assemble.setup_numerics(config)
    backend = distribute.create("default")
    info = data.dataset_info(opts.dataset, opts.data_dir)
    parts = harness.build_harness(config, backend, info)
    keras_model, keras_data = harness.build_keras(config, backend, info)
    harness.warm_up(parts, keras_model, keras_data, sizes.warmup)
    managers = {mode: _manager(parts, os.path.join(workdir, mode), mode == "async")
                for mode in ("sync", "async")}
    variants, saves = _keras_variants(opts, keras_model, keras_data, workdir)
    times, usage = measure.interleave(variants, sizes.reps, measure.ResourceSampler)
    pairs = {}
    for mode, manager in managers.items():
        for n in opts.intervals:
            saves[mode, n] = Saves()
            with measure.ResourceSampler() as sampler:
                pairs[mode, n] = harness_pairs(parts, manager, n, 8 * sizes.reps, saves[mode, n])
            usage[f"{mode}@{n}"] = [sampler.usage()]
    extras = _sizes_and_restores(parts, managers, keras_model, workdir, 1 if opts.quick else 3)
    for manager in managers.values():
        manager.close()
    keras.backend.clear_session()
    base = dict(benchmark="checkpoint", model=model, batch_size=batch, steps=sizes.steps,
                warmup=sizes.warmup, reps=sizes.reps, steps_per_call=config.steps_per_call,
                filesystem=filesystem_of(workdir))
    return [_harness_row(base, mode, n, pairs[mode, n], usage, saves, extras)
            if mode in managers else _keras_row(base, mode, n, times, usage, saves, extras)
            for mode in MODES for n in opts.intervals]


def _manager(parts, directory, async_save):
    from train.checkpoint import manager as checkpoint

    trainer = parts.trainer
    return checkpoint.CheckpointManager(
        directory=directory, is_chief=True, meta={"model": parts.config.model},
        state={"model": trainer.model.variables, "optimizer": trainer.optimizer.variables,
               "train": [trainer.step]},
        options=checkpoint.CheckpointOptions(keep=3, async_save=async_save))


def _keras_variants(opts, keras_model, keras_data, workdir):
    sizes = opts.sizes
    variants, saves = {}, {}
    variants["keras_none"] = lambda: harness.fit_window(
        keras_model, keras_data, sizes.steps, sizes.rewarm)
    paths = {"keras_full": os.path.join(workdir, "model.keras"),
             "keras_weights": os.path.join(workdir, "model.weights.h5")}
    for n in opts.intervals:
        steps = window_steps(sizes.steps, n)
        for mode, path in paths.items():
            saves[mode, n] = record = Saves()
            variants[f"{mode}@{n}"] = lambda n=n, s=steps, p=path, r=record: \
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


def _harness_row(base, mode, n, pair, usage, saves, extras):
    with_save, without = pair
    block = min(n, BLOCK)
    step = statistics.median(without) / block
    costs = [w - o for w, o in zip(with_save, without)]
    stall = measure.summarize([c / (n * step) for c in costs])
    standard_error = 1.2533 * stall["jitter"] / math.sqrt(max(1, stall["n"]))  # of a median
    return {**base, "variant": f"{mode}@{n}", "mode": mode, "interval": n,
            "block_steps": block, "pairs": len(costs),
            **measure.stat_fields("stall", stall, 4), "stall_se": round(standard_error, 4),
            "cost_ms_per_save": round(1000 * statistics.median(costs), 2),
            **_common(base, mode, n, step, usage, saves, extras)}


def _keras_row(base, mode, n, times, usage, saves, extras):
    t_steps = window_steps(base["steps"], n)
    per_step = [t / t_steps for t in times[f"{mode}@{n}"]]
    base_per_step = [t / base["steps"] for t in times["keras_none"]]
    stall = measure.summarize([a / b - 1 for a, b in zip(per_step, base_per_step)])
    return {**base, "variant": f"{mode}@{n}", "mode": mode, "interval": n,
            "window_steps": t_steps, **measure.stat_fields("stall", stall, 4),
            **_common(base, mode, n, statistics.median(base_per_step), usage, saves, extras)}


def _common(base, mode, n, step, usage, saves, extras):
    size, restore_ms = extras[mode]
    return {"blocking_ms": _round(saves[mode, n].ms_per_save, 2),
            "saves_timed": saves[mode, n].count, "baseline_step_ms": round(1000 * step, 2),
            "checkpoint_bytes": size, "restore_ms": round(restore_ms, 1),
            **measure.merge_usage(usage[f"{mode}@{n}"])}


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
