"""`input`: each training pipeline alone, against the rate training consumes.

Pipelines: train.data.train_dataset for the chosen dataset and `synthetic`, each with
and without augmentation (crop + flip), as the trainer uses them: with augmentation the
pipeline carries per-example codes and the trainer augments inside its compiled step
(train.loops.trainer). Variants, interleaved in one process:

  pipe:<p>         the pipeline alone: batches pulled inside a tf.function (as the trainer
                   pulls them), no model
  train:<p>        harness training (Trainer, default steps per call) fed by pipeline <p>
  train:none[+augment]   the same training fed one cached batch repeated
                   (`take(1).cache().repeat()`): the rate if input were free; +augment
                   still augments in the step, so it differs from train:<p>+augment by
                   the input alone
  train:<dataset>+augment@pipeline   the alternative: augmentation in tf.data, the trainer
                   not augmenting (reported beside the +augment row)

headroom = pipeline images/sec / no-input training images/sec (> 1: the pipeline alone
outruns training). input_wait_fraction = (t_train:<p> - t_train:none) / t_train:<p>, per
repetition (paired), the share of step time spent on input. On a CPU-only host the
pipeline's threads compete with the model's for the same cores, so this counts that
contention too, not only idle waiting on an empty prefetch buffer.
"""

import tempfile
import time

from benchmarks import harness, measure


def run(opts, machine):
    return measure.each_model_and_batch(opts, measure_config)


def pipelines(dataset):
    names = list(dict.fromkeys([dataset, "synthetic"]))
    return [(name, augment) for name in names for augment in (False, True)]


def _label(dataset, augment):
    return dataset + ("+augment" if augment else "")


def measure_config(opts, model, batch):
    import keras

    from train import assemble, data, distribute

    sizes = opts.sizes
    with tempfile.TemporaryDirectory(prefix="bench-input-", dir=opts.scratch) as workdir:
        config = harness.make_config(workdir=workdir, model=model, batch_size=batch,
                                     dataset=opts.dataset, data_dir=opts.data_dir)
        config = assemble.setup_numerics(config)
        backend = distribute.create("default")
        info = data.dataset_info(opts.dataset, opts.data_dir)
        parts = {augment: _cached_harness(config, augment, backend, info)
                 for augment in (False, True)}
        drain = _drain_function()
        variants = {_none(augment): lambda p=p: harness.trainer_steps(p, sizes.steps)
                    for augment, p in parts.items()}
        for name, augment in pipelines(opts.dataset):
            label = _label(name, augment)
            pipe_it, train_it = _iterators(config, backend, name, augment, opts.data_dir)
            variants[f"pipe:{label}"] = lambda it=pipe_it: _timed(drain, it, sizes.steps)
            variants[f"train:{label}"] = (lambda it=train_it, p=parts[augment]:
                                          harness.trainer_steps(p, sizes.steps, iterator=it))
            _timed(drain, pipe_it, sizes.warmup)  # trace, fill the prefetch buffers
            harness.trainer_steps(parts[augment], sizes.warmup, iterator=train_it)
        in_pipeline = iter(backend.distribute_dataset(
            harness.harness_dataset_fn(config, info, augment_in_pipeline=True)))
        variants[PIPELINE_AUGMENT] = lambda: harness.trainer_steps(
            parts[False], sizes.steps, iterator=in_pipeline)
        for p in parts.values():
            harness.trainer_steps(p, sizes.warmup)
        harness.trainer_steps(parts[False], sizes.warmup, iterator=in_pipeline)
        times, usage = measure.interleave(variants, sizes.reps, measure.ResourceSampler)
    keras.backend.clear_session()
    base = dict(benchmark="input", model=model, batch_size=batch, steps=sizes.steps,
                warmup=sizes.warmup, reps=sizes.reps)
    return [_row(base, name, augment, times, usage, main=name == opts.dataset)
            for name, augment in pipelines(opts.dataset)]


PIPELINE_AUGMENT = "train:augment@pipeline"


def _none(augment):
    return "train:none" + ("+augment" if augment else "")


def _cached_harness(config, augment, backend, info):
    """A harness (own model and Trainer) fed one cached batch, augmenting in the step or not."""
    import dataclasses

    config = dataclasses.replace(config, augment=augment)
    cached = harness.harness_dataset_fn(config, info, lambda ds: ds.take(1).cache().repeat())
    return harness.build_harness(config, backend, info, dataset_fn=cached)


def _iterators(config, backend, dataset, augment, data_dir):
    """(pipeline-only iterator, training iterator through the backend) of one pipeline."""
    import dataclasses

    from train import data

    cfg = dataclasses.replace(config, dataset=dataset, augment=augment)
    dataset_fn = harness.harness_dataset_fn(cfg, data.dataset_info(dataset, data_dir))
    return iter(dataset_fn()), iter(backend.distribute_dataset(dataset_fn))


def _drain_function():
    import tensorflow as tf

    @tf.function
    def drain(iterator, n):
        # Touch every batch (a sum of its labels) so nothing can be pruned away.
        total = tf.constant(0, tf.int64)
        for _ in tf.range(n):
            labels = next(iterator)[1]
            total += tf.reduce_sum(tf.cast(labels, tf.int64))
        return total
    return drain


def _timed(drain, iterator, steps):
    import tensorflow as tf

    began = time.perf_counter()
    drain(iterator, tf.constant(steps, tf.int64)).numpy()
    return time.perf_counter() - began


def _row(base, dataset, augment, times, usage, main):
    label = _label(dataset, augment)
    images = base["batch_size"] * base["steps"]
    none_times = times[_none(augment)]
    pipe = measure.summarize([images / t for t in times[f"pipe:{label}"]])
    train = measure.summarize([images / t for t in times[f"train:{label}"]])
    none = measure.summarize([images / t for t in none_times])
    wait = measure.summarize([(t - t0) / t for t, t0 in zip(times[f"train:{label}"],
                                                            none_times)])
    extra = {}
    if augment and main:
        extra["train_images_per_sec_augment_in_pipeline"] = round(
            measure.summarize([images / t for t in times[PIPELINE_AUGMENT]])["median"], 1)
    return {**base, "variant": label, "dataset": dataset, "augment": augment,
            **measure.stat_fields("pipeline_images_per_sec", pipe, 1),
            **measure.stat_fields("train_images_per_sec", train, 1),
            "train_images_per_sec_no_input": round(none["median"], 1), **extra,
            "headroom": round(pipe["median"] / none["median"], 3),
            **measure.stat_fields("input_wait_fraction", wait, 4),
            **{f"pipeline_{k}": v for k, v in measure.merge_usage(usage[f"pipe:{label}"]).items()},
            **measure.merge_usage(usage[f"train:{label}"])}
