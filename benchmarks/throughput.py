"""`throughput`: images/sec of the harness loop against Keras `model.fit`.

Per model, global batch size and strategy, two (or three) variants run interleaved in
one process on the same model architecture (same seed), the same tf.data pipeline and
the same global batch:

  keras_fit      model.compile(Adam, sparse CE, accuracy) + model.fit(verbose=0), the
                 seed's way; timed from batch ends inside fit (warmup excluded)
  harness        the real Controller + Trainer with --steps-per-call 10 (the default)
  harness_spc1   the same with --steps-per-call 1 (full runs): one step per compiled call,
                 like fit, to tell the loop's cost from the gain of multi-step calls

The default strategy runs in this process; `mirrored` with N logical CPUs (or GPUs) runs
in a child process per configuration (benchmarks.child), fit and harness interleaved
inside it. ratio_vs_keras_fit is the median of per-repetition ratios (each pair ran
back to back). Compute efficiency = images/sec x training FLOPs per image (counted from
the layers, benchmarks.flops) / the same-run matmul FLOP/s.
"""

import dataclasses
import tempfile

from benchmarks import child, flops, harness, measure

DEFAULT_MODELS = ("cnn", "resnet20")


def run(opts, machine):
    rows = []
    for model in opts.models or DEFAULT_MODELS:
        for batch in opts.batch_sizes:
            for strategy, replicas in strategy_configs(opts):
                rows += _one_config(opts, machine, model, batch, strategy, replicas)
    return rows


def strategy_configs(opts):
    configs = [("default", None)] if "default" in opts.strategies else []
    if "mirrored" in opts.strategies:
        configs.append(("mirrored", opts.replicas))
    return configs


def _one_config(opts, machine, model, batch, strategy, replicas):
    kwargs = dict(model=model, batch_size=batch, dataset=opts.dataset, data_dir=opts.data_dir,
                  sizes=dataclasses.asdict(opts.sizes), spc_list=list(opts.steps_per_call),
                  matmul_gflops=machine["matmul_gflops"])
    label = dict(benchmark="throughput", model=model, batch_size=batch, strategy=strategy,
                 replicas=replicas or 1)
    try:
        if strategy == "default":
            from train import distribute

            return measure_config(backend=distribute.create("default"), **kwargs)
        return child.call_in_child("benchmarks.throughput:measure_config", strategy=strategy,
                                   replicas=replicas, **kwargs)
    except Exception as exc:  # one failed configuration must not lose the others
        return [{**label, "variant": "error", "error": f"{type(exc).__name__}: {exc}"[:800]}]


def measure_config(*, backend, model, batch_size, dataset, data_dir, sizes, spc_list,
                   matmul_gflops):
    """Rows for fit and harness variants of one configuration, measured interleaved."""
    import keras

    from train import data, run as train_run

    sizes = measure.Sizes(**sizes)
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as workdir:
        config = harness.make_config(workdir=workdir, model=model, batch_size=batch_size,
                                     dataset=dataset, data_dir=data_dir)
        train_run.setup_numerics(config)  # same seed: same initial weights on both sides
        info = data.dataset_info(dataset, data_dir)
        parts = harness.build_harness(config, backend, info)
        keras_model, keras_data = harness.build_keras(config, backend, info)
        harness.warm_up(parts, keras_model, keras_data, sizes.warmup)
        variants = {"keras_fit": lambda: harness.fit_window(
            keras_model, keras_data, sizes.steps, sizes.rewarm)}
        for spc in spc_list:
            variants[_harness_name(spc)] = (
                lambda spc=spc: harness.controller_window(parts, sizes.steps, spc))
        times, usage = measure.interleave(variants, sizes.reps, measure.ResourceSampler)
        per_image = flops.training_flops_per_image(keras_model)
    keras.backend.clear_session()
    base = dict(benchmark="throughput", model=model, batch_size=batch_size,
                strategy=backend.name, replicas=backend.num_replicas, dataset=dataset,
                steps=sizes.steps, warmup=sizes.warmup, reps=sizes.reps,
                flops_per_image=per_image)
    return [_row(base, name, times, usage[name], matmul_gflops) for name in variants]


def _harness_name(spc):
    return "harness" if spc == 10 else f"harness_spc{spc}"


def _row(base, name, times, usage, matmul_gflops):
    batch, steps = base["batch_size"], base["steps"]
    rates = [batch * steps / t for t in times[name]]
    summary = measure.summarize(rates)
    ratios = measure.summarize(measure.paired_ratios(rates, [
        batch * steps / t for t in times["keras_fit"]]))
    return {**base, "variant": name, "steps_per_call": _spc_of(name),
            **measure.stat_fields("images_per_sec", summary, 1),
            "step_ms": round(1000 * batch / summary["median"], 2),
            "ratio_vs_keras_fit": round(ratios["median"], 3),
            "ratio_jitter": round(ratios["jitter"], 3),
            "compute_efficiency": _round(flops.efficiency(
                summary["median"], base["flops_per_image"], matmul_gflops), 3),
            **measure.merge_usage(usage)}


def _spc_of(name):
    if name == "keras_fit":
        return 1  # fit's default steps_per_execution, as the seed used it
    return 10 if name == "harness" else int(name.removeprefix("harness_spc"))


def _round(value, digits):
    return None if value is None else round(value, digits)
