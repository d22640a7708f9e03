"""Timing, interleaving, resource sampling and the statistics every report uses.

Pure pieces (summarize, paired_ratios, rotation) are unit-tested; the rest is thin.
"""

import dataclasses
import math
import statistics
import threading
import time

import psutil

MAD_TO_SIGMA = 1.4826  # scales a median absolute deviation to sigma for normal data


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to measure: steps per timed window, warmup, repetitions."""

    warmup: int = 10  # steps before the first timed window (tracing, pipeline fill)
    steps: int = 100  # timed steps per repetition
    reps: int = 5  # repetitions (interleaved)
    rewarm: int = 5  # untimed steps before each window of a fresh iterator (Keras fit)


FULL = Sizes()
QUICK = Sizes(warmup=3, steps=10, reps=2, rewarm=2)  # sanity, not figures: < 3 minutes


def summarize(values):
    """Median and spread of repeated measurements (robust to one outlier).

    jitter: 1.4826 x median absolute deviation (tf_cnn_benchmarks' robust sigma);
    ci95: 1.96 x sample standard deviation (Horovod's synthetic benchmark).
    """
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"median": float("nan"), "jitter": float("nan"), "ci95": float("nan"),
                "min": float("nan"), "max": float("nan"), "n": 0}
    median = statistics.median(values)
    jitter = MAD_TO_SIGMA * statistics.median(abs(v - median) for v in values)
    sigma = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"median": median, "jitter": jitter, "ci95": 1.96 * sigma,
            "min": min(values), "max": max(values), "n": len(values)}


def stat_fields(name, summary, digits=3):
    """Flatten a summary into row fields: name (the median), name_jitter, _min, _max, _ci95."""
    fields = {name: round(summary["median"], digits)}
    for key in ("jitter", "min", "max", "ci95"):
        fields[f"{name}_{key}"] = round(summary[key], digits)
    return fields


def paired_ratios(numerators, denominators):
    """Ratio per repetition: variant i against the baseline of the same repetition.

    Pairing is why variants are interleaved: a slow moment of the machine hits both
    members of a pair, so the ratio is steadier than a ratio of medians.
    """
    return [n / d for n, d in zip(numerators, denominators) if d and n is not None]


def rotation(names, rep):
    """Order of the variants in repetition `rep`: ABBA-like (A B, B A, B A, A B for two),
    so a linear drift of the machine hits every variant alike, and no variant always
    runs first (after a pause) or right after the same neighbour."""
    names = list(names)
    if not names:
        return names
    shift = (rep // 2) % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if rep % 2 else order


def interleave(variants, reps, sampler_factory=None):
    """Run each variant `reps` times, interleaved; {name: [results]} and {name: [usage]}.

    variants: {name: callable() -> a measurement}. sampler_factory() -> a context
    manager with .usage() (CPU and RSS while the variant ran), or None.
    """
    results = {name: [] for name in variants}
    usage = {name: [] for name in variants}
    for rep in range(reps):
        for name in rotation(variants, rep):
            if sampler_factory is None:
                results[name].append(variants[name]())
                continue
            with sampler_factory() as sampler:
                results[name].append(variants[name]())
            usage[name].append(sampler.usage())
    return results, usage


def merge_usage(samples):
    """Usage of one variant over its repetitions: mean CPU %, peak RSS."""
    samples = [s for s in samples if s]
    if not samples:
        return {}
    return {"cpu_percent": round(statistics.fmean(s["cpu_percent"] for s in samples), 1),
            "rss_mb": round(max(s["rss_mb"] for s in samples), 1)}


class ResourceSampler:
    """Samples CPU % and RSS (summed) of one process and its descendants with psutil, in
    a background thread, while a variant runs: this process by default, or `root` (a
    pid: a run we started). CPU % is of one core (200 = two cores busy)."""

    def __init__(self, interval=0.2, root=None):
        self.interval = interval
        self.root = root
        self._stop = threading.Event()
        self._cpu, self._rss = [], []
        self._thread = None
        self._procs = {}

    def _processes(self):
        try:
            root = psutil.Process(self.root)
            procs = [root] + (root.children(recursive=True) if self.root else [])
        except psutil.Error:
            return []  # the run has ended
        for proc in procs:
            if proc.pid not in self._procs:
                self._procs[proc.pid] = proc
                _cpu_percent(proc)  # the first call only primes the counter
        return [self._procs[p.pid] for p in procs]

    def _sample(self):
        procs = self._processes()
        self._cpu.append(sum(_cpu_percent(p) for p in procs))
        self._rss.append(sum(_rss(p) for p in procs))

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._processes()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def usage(self):
        cpu = [c for c in self._cpu if c is not None]
        return {"cpu_percent": statistics.fmean(cpu) if cpu else 0.0,
                "rss_mb": max(self._rss, default=0) / 2**20}


def _cpu_percent(proc):
    try:
        return proc.cpu_percent(None)
    except psutil.Error:
        return 0.0  # the process ended between listing and sampling


def _rss(proc):
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


class Stopwatch:
    """perf_counter seconds of a with-block: `with Stopwatch() as sw: ...; sw.seconds`."""

    def __enter__(self):
        self.start = time.perf_counter()
        self.seconds = None
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def each_model_and_batch(opts, measure_config, default_models=("cnn",)):
    """Rows of measure_config(opts, model, batch) for every model and batch size asked for."""
    rows = []
    for model in opts.models or default_models:
        for batch in opts.batch_sizes:
            rows += measure_config(opts, model, batch)
    return rows
