"""`scaling`: multiworker and Horovod with 1 and 2 workers on localhost.

Each configuration is a real run: `python -m launch --nproc N [--backend horovod] --
python -m benchmarks.pin --cpus-per-worker K -- python -m train --strategy S ...`
(benchmarks.pin: each worker on its own K CPUs, K = usable CPUs / the largest N, with
TF_NUM_INTRAOP_THREADS=K). Weak scaling, as Horovod's synthetic benchmark: the batch per
worker is fixed (--batch-size), the global batch is N times it. The run logs every
`steps` steps; the first interval (tracing, warmup) is dropped and each later interval's
images/sec (all workers together) is one repetition. Configurations run back to back,
in ABBA order over two rounds (one with --quick, where the two backends also run at the
same time: a check that they work, not a figure).
Scaling efficiency = images/sec(N) / (N x images/sec(1)).
"""

import concurrent.futures
import importlib.util
import os
import sys

from benchmarks import measure, procs

BACKENDS = ("multiworker", "horovod")


def run(opts, machine):
    rows = []
    for model in opts.models or ("cnn",):
        for batch in opts.batch_sizes:
            if opts.quick:  # a check only: both backends at once, to stay in the time budget
                with concurrent.futures.ThreadPoolExecutor(len(BACKENDS)) as pool:
                    parts = pool.map(lambda b: measure_backend(opts, machine, b, model, batch),  # noqa: B023
                                     BACKENDS)
                    rows += [row for part in parts for row in part]
            else:
                for backend in BACKENDS:
                    rows += measure_backend(opts, machine, backend, model, batch)
    return rows


def horovod_missing():
    """Why Horovod variants cannot run here, or None."""
    if importlib.util.find_spec("horovod") is None:
        return "skipped: horovod not installed"
    if importlib.util.find_spec("train.distribute.horovod") is None:
        return "skipped: train.distribute.horovod not available"
    from launch import plan
    from train.errors import UsageError

    try:
        plan.find_horovodrun()
    except UsageError:
        return "skipped: horovodrun not found"
    return None


def cpus_per_worker(opts):
    return max(1, len(os.sched_getaffinity(0)) // max(opts.workers))


def measure_backend(opts, machine, backend, model, batch):
    k = cpus_per_worker(opts)
    base = dict(benchmark="scaling", variant=backend, model=model, per_worker_batch=batch,
                dataset=opts.dataset, cpus_per_worker=k,
                pinning=f"{k} CPU/worker: sched_setaffinity + TF_NUM_INTRAOP_THREADS={k}")
    missing = horovod_missing() if backend == "horovod" else None
    if missing:
        return [{**base, "workers": n, "batch_size": n * batch, "skipped": missing}
                for n in opts.workers]
    rates = {n: [] for n in opts.workers}
    usage = {n: [] for n in opts.workers}
    errors = []
    for round_ in range(1 if opts.quick else 2):
        for n in measure.rotation(opts.workers, round_):
            try:
                got, used = run_once(opts, backend, model, batch, n, k, round_)
                rates[n] += got
                usage[n].append(used)
            except Exception as exc:  # keep the other configurations
                errors.append(f"{n} workers: {type(exc).__name__}: {exc}"[:600])
    return _rows(base, batch, rates, usage, errors)


def run_once(opts, backend, model, batch, workers, k, round_):
    """Images/sec (all workers) per log interval after the first, and resource usage."""
    steps = opts.sizes.steps
    workdir = os.path.join(opts.scratch, f"scaling-{backend}-{model}-{workers}-{round_}")
    total = steps * (opts.sizes.reps + 1)
    launch = [sys.executable, "-m", "launch", "--nproc", str(workers), "--max-restarts", "0"]
    if backend == "horovod":
        launch += ["--backend", "horovod"]
    pin = [sys.executable, "-m", "benchmarks.pin", "--cpus-per-worker", str(k), "--"]
    train = procs.train_argv(workdir=workdir, model=model, batch_size=batch * workers,
                             dataset=opts.dataset, data_dir=opts.data_dir, steps=total,
                             log_every=steps, checkpoint_every=total, strategy=backend)
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, "bench.log")
    proc = procs.start(launch + ["--"] + pin + train, log)
    try:
        with measure.ResourceSampler(root=proc.pid) as sampler:
            code = proc.wait(timeout=1800)
    finally:
        procs.stop(proc)
    if code != 0:
        raise RuntimeError(f"exit {code}: {procs.log_tail(log)}")
    logged = [r for r in procs.read_rows(workdir) if "images_per_sec" in r]
    return [r["images_per_sec"] for r in logged[1:]], sampler.usage()


def _rows(base, batch, rates, usage, errors):
    medians = {n: measure.summarize(v)["median"] for n, v in rates.items()}
    single = medians.get(1)
    rows = []
    for n, values in rates.items():
        if not values:
            continue
        summary = measure.summarize(values)
        efficiency = summary["median"] / (n * single) if single else None
        rows.append({**base, "workers": n, "batch_size": n * batch, "intervals": len(values),
                     **measure.stat_fields("images_per_sec", summary, 1),
                     "scaling_efficiency": None if efficiency is None else round(efficiency, 3),
                     **measure.merge_usage(usage[n])})
    if errors:
        rows.append({**base, "batch_size": batch, "variant": "error",
                     "error": f"{base['variant']}: " + "; ".join(errors)[:800]})
    return rows
