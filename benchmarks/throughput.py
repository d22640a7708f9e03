"""`throughput`: images/sec of the harness loop against Keras `model.fit`.

Per model, global batch size and strategy, two (or three) variants run interleaved in
one process on the same model architecture (same seed), the same tf.data pipeline and
the same global batch:

  keras_fit      model.compile(Adam, sparse CE, accuracy) + model.fit(verbose=0), the
                 seed's way; timed from batch ends inside fit (warmup excluded)
  harness        the real Controller + Trainer with default settings: --steps-per-call 10,
                 --precision auto (mixed_bfloat16 where there are bfloat16 matrix units,
                 train.precision; the `precision` column says what it resolved to)
  harness_spc1   the same with --steps-per-call 1 (full runs): one step per compiled call,
                 like fit, to tell the loop's cost from the gain of multi-step calls
  harness_fp32   the harness at another --precision than the default's (full runs; also
  harness_bfloat16  _bfloat16): fp32 is the like-for-like comparison with fit, which
                 stays float32, the seed's default
  harness_default_strategy  (mirrored configurations) `harness` under the default
                 strategy in the same process; the mirrored `harness` row's
                 ratio_vs_default_strategy is the cost of MirroredStrategy itself
                 (--builds N: over N builds per strategy, see _strategy_builds)

Every configuration (strategy, replicas) runs in a child process of its own
(benchmarks.child), fit and harness interleaved inside it: mirrored over N logical CPUs
needs a fresh process, and the default strategy gets one too, so that `default` and
`mirrored` rows come from processes set up alike. Still, two processes differ: the same
bfloat16 harness measured 16.0 to 18.5 ms per step in fresh processes here, while `fit`
agreed within 1%. So what MirroredStrategy itself costs is measured within its process,
against harness_default_strategy. ratio_vs_keras_fit is the median of per-repetition
ratios (each pair ran back to back). Compute efficiency = images/sec x training FLOPs
per image (counted from the layers, benchmarks.flops) / the same-run matmul FLOP/s.
"""

import dataclasses
import functools
import tempfile

from benchmarks import child, flops, harness, measure

DEFAULT_MODELS = ("cnn", "resnet20")
SAME_PROCESS_DEFAULT = "harness_default_strategy"
EXTRA_BUILD = "#"  # `harness#2`: another build of a variant, for ratio_vs_default_strategy only


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
                  precisions=list(opts.precisions), builds=opts.builds,
                  matmul_gflops=machine["matmul_gflops"])
    label = dict(benchmark="throughput", model=model, batch_size=batch, strategy=strategy,
                 replicas=replicas or 1)
    try:
        return child.call_in_child("benchmarks.throughput:measure_config", strategy=strategy,
                                   replicas=replicas, **kwargs)
    except Exception as exc:  # one failed configuration must not lose the others
        return [{**label, "variant": "error", "error": f"{type(exc).__name__}: {exc}"[:800]}]


def measure_config(*, backend, model, batch_size, dataset, data_dir, sizes, spc_list,
                   matmul_gflops, precisions=(), builds=1):
    """Rows for fit and harness variants of one configuration, measured interleaved."""
    import keras

    sizes = measure.Sizes(**sizes)
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as workdir:
        make = functools.partial(_build, backend=backend, workdir=workdir, model=model,
                                 batch_size=batch_size, dataset=dataset, data_dir=data_dir)
        parts = make()  # default settings
        default_precision = parts.config.precision  # resolved
        keras_model, keras_data = harness.build_keras(parts.config, backend, parts.info)
        harness.warm_up(parts, keras_model, keras_data, sizes.warmup)
        variants = {"keras_fit": lambda: harness.fit_window(
            keras_model, keras_data, sizes.steps, sizes.rewarm)}
        kinds = {"keras_fit": (1, "fp32")}  # fit's default steps_per_execution, as the seed
        for spc in spc_list:
            name = "harness" if spc == 10 else f"harness_spc{spc}"
            kinds[name] = (spc, default_precision)
            variants[name] = lambda spc=spc: harness.controller_window(parts, sizes.steps, spc)
        _add_precision_variants(kinds, variants, make, precisions, default_precision, sizes)
        if backend.name == "mirrored":  # the same loop under the default strategy, here
            kinds[SAME_PROCESS_DEFAULT] = (10, default_precision)
            variants.update(_strategy_builds(make, parts, sizes, builds))
        times, usage = measure.interleave(variants, sizes.reps, measure.ResourceSampler)
        per_image = flops.training_flops_per_image(keras_model)
    keras.backend.clear_session()
    base = dict(benchmark="throughput", model=model, batch_size=batch_size,
                strategy=backend.name, replicas=backend.num_replicas, dataset=dataset,
                steps=sizes.steps, warmup=sizes.warmup, reps=sizes.reps,
                flops_per_image=per_image)
    return [_row(base, name, kinds[name], times, usage[name], matmul_gflops)
            for name in variants if EXTRA_BUILD not in name]


def _add_precision_variants(kinds, variants, make, precisions, default_precision, sizes):
    """One `harness_<precision>` variant per other precision asked for, built and warmed."""
    from train.precision import resolve as resolve_precision

    for precision in dict.fromkeys(resolve_precision(p) for p in precisions):
        if precision == default_precision:
            continue  # that is `harness`
        other = make(precision=precision)
        harness.warm_up(other, None, None, sizes.warmup)
        name = f"harness_{precision.removeprefix('mixed_')}"
        kinds[name] = (10, precision)
        variants[name] = lambda other=other: harness.controller_window(other, sizes.steps, 10)


def _strategy_builds(make, parts, sizes, builds):
    """`builds` builds of the harness under each strategy (`parts` is the first mirrored
    one), built alternately, as variants `harness#2`, SAME_PROCESS_DEFAULT, ...#2, ...
    Two builds of the very same configuration in one process differ by up to ~3% per
    step here, so what MirroredStrategy costs is their means' ratio, over enough builds."""
    from train import distribute

    default_backend = distribute.create("default")
    variants = {}
    for i in range(builds):
        sides = [(SAME_PROCESS_DEFAULT, default_backend), ("harness", parts.backend)]
        for name, backend in sides[::-1] if i % 2 else sides:
            if i == 0 and name == "harness":
                continue  # `parts` itself, a variant already
            built = make(backend=backend)
            harness.warm_up(built, None, None, sizes.warmup)
            variants[name + (f"{EXTRA_BUILD}{i + 1}" if i else "")] = functools.partial(
                harness.controller_window, built, sizes.steps, 10)
    return variants


def _builds_of(times, name):
    """Per repetition, the summed seconds of every build of variant `name`."""
    same = [t for n, t in times.items() if n == name or n.startswith(name + EXTRA_BUILD)]
    return [sum(reps) for reps in zip(*same)], len(same)


def _build(*, backend, workdir, model, batch_size, dataset, data_dir, precision="auto"):
    """Harness parts under `precision`; the global dtype policy is float32 again afterwards
    (harness.build_keras builds the fit model under float32 either way)."""
    import keras

    from train import assemble, data

    config = harness.make_config(workdir=workdir, model=model, batch_size=batch_size,
                                 dataset=dataset, data_dir=data_dir, precision=precision)
    config = assemble.setup_numerics(config)  # same seed: same initial weights on every side
    try:
        return harness.build_harness(config, backend, data.dataset_info(dataset, data_dir))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _row(base, name, kind, times, usage, matmul_gflops):
    batch, steps = base["batch_size"], base["steps"]
    spc, precision = kind
    rates = [batch * steps / t for t in times[name]]
    summary = measure.summarize(rates)
    ratios = measure.summarize(measure.paired_ratios(rates, [
        batch * steps / t for t in times["keras_fit"]]))
    if name == "harness" and SAME_PROCESS_DEFAULT in times:
        mirrored, builds = _builds_of(times, name)
        default, _ = _builds_of(times, SAME_PROCESS_DEFAULT)
        base = dict(base, strategy_builds=builds, ratio_vs_default_strategy=round(
            measure.summarize(measure.paired_ratios(default, mirrored))["median"], 3))
    return {**base, "variant": name, "steps_per_call": spc, "precision": precision,
            **measure.stat_fields("images_per_sec", summary, 1),
            "step_ms": round(1000 * batch / summary["median"], 2),
            "ratio_vs_keras_fit": round(ratios["median"], 3),
            "ratio_jitter": round(ratios["jitter"], 3),
            # Against the float32 matmul peak: above 1.0 is possible with bfloat16 units.
            "compute_efficiency": _round(flops.efficiency(
                summary["median"], base["flops_per_image"], matmul_gflops), 3),
            **measure.merge_usage(usage)}


def _round(value, digits):
    return None if value is None else round(value, digits)
