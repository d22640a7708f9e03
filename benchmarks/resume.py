"""`resume`: time to resume and steps lost, after SIGTERM and after kill -9.

One trial: run `python -m train` on a fresh workdir (checkpoint every C steps); once it
has logged step C + C/2 (so a kill -9 loses work), send SIGTERM (the harness saves and
exits 42) or SIGKILL; then run the same command again and read its `resume` row from
metrics.jsonl (train.resume.resume_reporter): time_to_resume_s = process start to the
first step after the restore; steps_lost = steps logged after the restored checkpoint
(0 after a preemption). The second run is killed right after that row: the rest of
the run is not what is measured. SIGTERM and kill -9 trials alternate (with --quick
they run at the same time: a check that it works, not a figure).
"""

import concurrent.futures
import os
import signal

from benchmarks import measure, procs

KINDS = {"sigterm": signal.SIGTERM, "kill9": signal.SIGKILL}
EXPECTED_EXIT = {"sigterm": 42, "kill9": -signal.SIGKILL}


def run(opts, machine):
    return measure.each_model_and_batch(opts, measure_config)


def schedule(opts):
    """(checkpoint every C, log every L, kill once this step is logged)."""
    every = 20 if opts.quick else 50
    log_every = 5 if opts.quick else 10
    return every, log_every, every + every // 2


def measure_config(opts, model, batch):
    trials = {kind: [] for kind in KINDS}
    for i in range(opts.trials):
        order = measure.rotation(KINDS, i)
        if opts.quick:  # a sanity check only: both kinds at once, to stay in the time budget
            with concurrent.futures.ThreadPoolExecutor(len(order)) as pool:
                done = list(pool.map(lambda k: _trial(opts, model, batch, k, i), order))  # noqa: B023
        else:
            done = [_trial(opts, model, batch, kind, i) for kind in order]
        for kind, result in zip(order, done):
            trials[kind].append(result)
    base = dict(benchmark="resume", model=model, batch_size=batch, dataset=opts.dataset)
    return [_row(base, kind, results) for kind, results in trials.items()]


def _trial(opts, model, batch, kind, i):
    workdir = os.path.join(opts.scratch, f"resume-{model}-{batch}-{kind}-{i}")
    try:
        return one_trial(opts, model, batch, kind, workdir)
    except Exception as exc:  # keep the other trials
        return {"error": f"{type(exc).__name__}: {exc}"[:600]}


def one_trial(opts, model, batch, kind, workdir):
    every, log_every, kill_at = schedule(opts)
    argv = procs.train_argv(workdir=workdir, model=model, batch_size=batch,
                            dataset=opts.dataset, data_dir=opts.data_dir, steps=10 ** 6,
                            log_every=log_every, checkpoint_every=every)
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, "bench.log")
    first = procs.start(argv, log)
    try:
        if procs.wait_for_row(first, workdir, lambda r: r.get("step", 0) >= kill_at
                              and "loss" in r, timeout=600) is None:
            raise RuntimeError(f"the first run ended early; log: {procs.log_tail(log)}")
        last_logged = max(r["step"] for r in procs.read_rows(workdir) if "loss" in r)
    finally:
        exit_code = procs.stop(first, KINDS[kind])
    second = procs.start(argv, log)
    try:
        with measure.ResourceSampler(root=second.pid) as sampler:
            row = procs.wait_for_row(second, workdir, lambda r: r.get("event") == "resume",
                                     timeout=600)
    finally:
        procs.stop(second, signal.SIGKILL)
    if row is None:
        raise RuntimeError(f"no resume row; log: {procs.log_tail(log)}")
    return {"time_to_resume_s": row.get("time_to_resume_s"), "steps_lost": row.get("steps_lost"),
            "restored_step": row.get("restored_step"), "last_logged_step": last_logged,
            "exit_code": exit_code, **sampler.usage()}


def _row(base, kind, results):
    good = [r for r in results if "error" not in r]
    row = {**base, "variant": kind, "trials": len(good),
           **measure.stat_fields("time_to_resume_s", measure.summarize(
               [r["time_to_resume_s"] for r in good]), 3),
           "steps_lost": measure.summarize([r["steps_lost"] for r in good])["median"],
           "steps_lost_trials": [r["steps_lost"] for r in good],
           "restored_steps": [r["restored_step"] for r in good],
           "last_logged_steps": [r["last_logged_step"] for r in good],
           "exit_codes": [r["exit_code"] for r in good],
           "expected_exit_code": EXPECTED_EXIT[kind],
           **measure.merge_usage(good)}
    errors = [r["error"] for r in results if "error" in r]
    if errors and not good:
        return {**base, "variant": "error", "kind": kind, "error": "; ".join(errors)[:800]}
    if errors:
        row["errors"] = errors
    return row
