"""What a report ran on: CPU/GPU model, versions, load, and a same-run matmul GFLOP/s.

The matmul figure is the yardstick for compute efficiency: it is what this process
could get from the same cores at the moment of the run (other users included), which a
datasheet peak cannot say on a shared machine.
"""

import os
import platform
import sys
import time

from benchmarks.measure import summarize


def cpu_model():
    """The CPU's marketing name from /proc/cpuinfo (Linux), else platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_models():
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(details.get("device_name", gpu.name))
    return names


def matmul_gflops(n=1024, calls=8, reps=5):
    """float32 n x n matmul GFLOP/s (2 n^3 per product), median of `reps` timings.

    `calls` products are chained inside one tf.function so Python dispatch does not
    count; the result is read back so the timing ends when the work does.
    """
    import tensorflow as tf

    a = tf.random.stateless_uniform([n, n], seed=[1, 2])

    @tf.function
    def chain(x):
        for _ in range(calls):
            x = tf.matmul(x, a) * (1.0 / n)  # rescaled: values stay finite
        return tf.reduce_sum(x)

    chain(a).numpy()  # trace and warm up
    rates = []
    for _ in range(reps):
        start = time.perf_counter()
        chain(a).numpy()
        rates.append(2.0 * n ** 3 * calls / (time.perf_counter() - start) / 1e9)
    return summarize(rates)


def machine_info(quick=False):
    """The `machine` object of every report."""
    import keras
    import tensorflow as tf

    from train import precision

    default_precision, why = precision.auto()
    gflops = matmul_gflops(n=512 if quick else 1024, reps=3 if quick else 5)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_model(),
        "gpu_models": gpu_models(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(affinity) if affinity else os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "default_precision": default_precision,
        "bfloat16_units": why,
        "matmul_gflops": round(gflops["median"], 1),
        "matmul_gflops_jitter": round(gflops["jitter"], 1),
        "matmul_size": 512 if quick else 1024,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def describe(machine):
    """One line for the head of a table."""
    device = ", ".join(machine["gpu_models"]) or f"{machine['cpu_model']} " \
        f"({machine['usable_cpus']} CPUs)"
    return (f"{device}; TensorFlow {machine['tensorflow_version']}, Keras "
            f"{machine['keras_version']}; matmul {machine['matmul_gflops']:.0f} GFLOP/s "
            f"(same run); default precision {machine.get('default_precision', 'fp32')} "
            f"({machine.get('bfloat16_units', '')}); load average at start "
            f"{machine['load_average_at_start'][0]:.1f}")
