"""harness-bench: the harness measured against the plain Keras way, in one run.

Subcommands (one module each): throughput, input, checkpoint, resume, scaling; `all`
runs them in that order. Rules every subcommand keeps:

* Variants that are compared run interleaved in one process (or as paired child
  processes where TensorFlow must be configured differently, e.g. logical CPUs for
  MirroredStrategy), so machine noise hits them alike; figures are ratios against a
  baseline taken in the same run.
* Warmup (tracing, pipeline fill) is excluded; each variant is repeated and reported as
  the median with its spread (robust sigma of the repetitions, min/max, 1.96 sigma).
* The harness variants drive the real train.* objects (Trainer, Controller pieces,
  CheckpointManager, data pipelines, `python -m train`, `python -m launch`).

Rooms: cli (flags, dispatch, output), measure (timing, interleaving, resource sampling,
statistics), machine (what ran: CPU/GPU, versions, matmul GFLOP/s), flops (training FLOPs
per image counted from the model), harness (models/trainers/data as a run builds them),
report (JSON, markdown table, plots), child (the child-process entry point), pin (CPU
pinning wrapper for multi-process runs).
"""
