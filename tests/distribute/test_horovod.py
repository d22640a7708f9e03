"""--strategy horovod: Horovod's core ops, Gloo on localhost, CPU only.

The multi-process tests need Horovod built against this TensorFlow
(`bash launch/build_horovod.sh .venv/bin/python`); without it they are skipped, and the
"not installed" tests run instead of being skipped.
"""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, harness_env, read_metrics

HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
HAVE_HOROVOD = importlib.util.find_spec("horovod") is not None and os.path.exists(HOROVODRUN)
needs_horovod = pytest.mark.skipif(
    not HAVE_HOROVOD,
    reason="horovod is not installed in this Python; build it with: "
    "bash launch/build_horovod.sh .venv/bin/python",
)

STEPS = 120  # long enough for the kill -9 to land mid-run on a busy 2-core machine
# Same global batch (32 = 2 ranks x 16), seed, numerics and learning-rate schedule
# (--scale-lr: x number of ranks/workers, linear warmup over 20 steps) for every run below.
LR, WARMUP = 1e-3, 20
FLAGS = [
    "--batch-size",
    "32",
    "--log-every",
    "10",
    "--eval-every",
    "0",
    "--checkpoint-every",
    "20",
    "--steps-per-call",
    "5",
    "--seed",
    "3",
    "--deterministic",
    "--learning-rate",
    str(LR),
    "--scale-lr",
    "--warmup-steps",
    str(WARMUP),
]
# Horovod (Gloo) vs MultiWorkerMirroredStrategy (TF ring all-reduce), per logged loss.
# With 2 ranks both compute a + b in float32, which is exact and commutative, so they
# agree bitwise (observed); the tolerance leaves room for a different reduction order
# (fusion, chunking) costing an ulp per step, which stays far below 1e-5 over 60 steps.
LOSS_RTOL = 1e-5
DIGEST = re.compile(r"^\[(\d)\]<stdout>:\s*finished\s+step=(\d+)\s+weights_sha256=(\w+)", re.M)


def clean_env(tag=None):
    """The harness env without any Horovod/MPI/TF_CONFIG identity from outside."""
    env = {
        k: v
        for k, v in harness_env().items()
        if not k.startswith(("HOROVOD_", "OMPI_", "PMI_")) and k != "TF_CONFIG"
    }
    if tag:
        env["HARNESS_TEST_TAG"] = tag  # lets the test find its own rank processes
    return env


def run(argv, *, env, timeout, check_exit=0):
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check_exit is not None and proc.returncode != check_exit:
        raise AssertionError(
            f"exit {proc.returncode} != {check_exit}: {' '.join(argv)}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n"
            f"--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def horovodrun(*command, env, timeout=240, check_exit=0):
    return run(
        [HOROVODRUN, "--gloo", "-np", "2", "-H", "localhost:2", *command],
        env=env,
        timeout=timeout,
        check_exit=check_exit,
    )


def train_argv(workdir, data_dir, *flags):
    return [
        sys.executable,
        "-m",
        "train",
        "--strategy",
        "horovod",
        "--workdir",
        str(workdir),
        "--data-dir",
        data_dir,
        *FLAGS,
        *flags,
    ]


def digests(stdout):
    """{rank: (final step, weights digest)} from the ranks' `finished` lines."""
    return {int(rank): (int(step), digest) for rank, step, digest in DIGEST.findall(stdout)}


def losses(workdir):
    return {r["step"]: r["loss"] for r in read_metrics(workdir) if "loss" in r}


def rank_pids(tag, rank):
    """Processes of this test (by tag) that are Horovod rank `rank`."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if (
            f"HARNESS_TEST_TAG={tag}".encode() in env
            and f"HOROVOD_RANK={rank}".encode() in env
            and cmdline.split(b"\0")[1:3] == [b"-m", b"train"]
        ):
            pids.append(int(name))
    return pids


def logged(workdir):
    try:
        return any("loss" in r for r in read_metrics(workdir))
    except (OSError, ValueError):
        return False


def wait_for(predicate, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(
                f"exited {proc.returncode} before {what}\n{out[-3000:]}\n{err[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def signal_rank_1(proc, tag, ready, what, signum, *, timeout):
    """Once ready(), send signum to rank 1 of the run tagged `tag`; proc's (stdout, stderr)."""
    try:
        wait_for(ready, proc, 180, what)
        victims = rank_pids(tag, 1)
        assert len(victims) == 1, victims
        os.kill(victims[0], signum)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# --- without Horovod -------------------------------------------------------------------


def test_missing_horovod_is_a_usage_error_naming_the_build_script(monkeypatch):
    from train import distribute
    from train.errors import UsageError

    monkeypatch.setitem(sys.modules, "horovod", None)  # import horovod -> ImportError
    monkeypatch.delitem(sys.modules, "horovod.tensorflow", raising=False)
    with pytest.raises(
        UsageError,
        match=r"horovod is not installed; build it with: "
        r"bash launch/build_horovod\.sh",
    ):
        distribute.create("horovod")


def test_fp16_allreduce_needs_horovod_strategy():
    from train import distribute
    from train.errors import UsageError

    with pytest.raises(UsageError, match="applies to --strategy horovod only"):
        distribute.create("default", fp16_allreduce=True)


@pytest.mark.slow
def test_strategy_horovod_without_horovod_is_one_line_and_exit_2(tmp_path, data_dir):
    hide = (
        "import sys; sys.modules['horovod'] = None; from train.cli import train_main; "
        "sys.exit(train_main(sys.argv[1:]))"
    )
    proc = run(
        [
            sys.executable,
            "-c",
            hide,
            "--strategy",
            "horovod",
            "--workdir",
            str(tmp_path / "run"),
            "--data-dir",
            data_dir,
            "--steps",
            "5",
        ],
        env=clean_env(),
        timeout=120,
        check_exit=2,
    )
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "horovod is not installed" in lines[0] and "launch/build_horovod.sh" in lines[0]
    assert not (tmp_path / "run").exists()


# --- with Horovod ----------------------------------------------------------------------


@pytest.mark.slow
@needs_horovod
def test_without_a_launcher_it_trains_as_a_single_rank(tmp_path, data_dir):
    proc = run(
        train_argv(tmp_path / "run", data_dir, "--steps", "10", "--no-export"),
        env=clean_env(),
        timeout=180,
    )
    assert "horovod: rank 0 of 1" in proc.stdout
    assert max(losses(tmp_path / "run")) == 10


BACKEND_SCRIPT = r"""
import sys
import numpy as np
import keras
import tensorflow as tf
from train.distribute import horovod as horovod_backend

fp16 = sys.argv[1] == "fp16"
b = horovod_backend.create(fp16_allreduce=fp16)
r = b.worker_index
assert (b.num_workers, b.num_replicas, b.is_chief) == (2, 2, r == 0), b.describe()
ctx = b.input_context()
assert (ctx.input_pipeline_id, ctx.num_input_pipelines,
        ctx.get_per_replica_batch_size(64)) == (r, 2, 32)

# Broadcast from rank 0 onto Keras 3 variables and a raw tf.Variable.
kv = keras.Variable(np.full((3,), r + 1.0, np.float32))
tv = tf.Variable([10 * r, 10 * r + 1], dtype=tf.int64)
b.broadcast_variables([kv, tv])
assert kv.numpy().tolist() == [1.0] * 3 and tv.numpy().tolist() == [0, 1], (kv, tv)

# Gradients are summed across ranks (None stays None); in float16 on the wire if asked.
third = np.float32(1 / 3)
grads = tf.function(lambda: b.reduce_gradients(
    [tf.fill([4], 0.5 * (r + 1)), None, tf.constant([[third]])]))()
assert grads[1] is None
np.testing.assert_array_equal(grads[0].numpy(), np.full(4, 1.5, np.float32))
expect = np.float32(np.float16(third) * 2) if fp16 else np.float32(third + third)
assert grads[2].numpy()[0, 0] == expect, (grads[2].numpy(), expect)

# Metrics vector: summed across ranks.
sums = tf.function(lambda: b.reduce_sum(tf.constant([float(r), 1.0])))()
assert sums.numpy().tolist() == [1.0, 2.0], sums
print(f"rank {r} backend ok ({b.describe()})")
"""


@pytest.mark.slow
@needs_horovod
@pytest.mark.parametrize("compression", ["none", "fp16"])
def test_backend_ops_on_two_ranks(tmp_path, compression):
    script = tmp_path / "backend_check.py"
    script.write_text(BACKEND_SCRIPT)
    proc = horovodrun(sys.executable, str(script), compression, env=clean_env(), timeout=180)
    assert proc.stdout.count("backend ok") == 2, proc.stdout


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    """An uninterrupted two-rank run. Each rank is given its own workdir (ref0, ref1), so
    that anything rank 1 wrote would show: it must write nothing."""
    base = tmp_path_factory.mktemp("horovod_ref")
    argv = train_argv(os.path.join(base, "ref$HOROVOD_RANK"), data_dir, "--steps", str(STEPS))
    command = "exec " + " ".join(a if "$" in a else f"'{a}'" for a in argv)
    proc = horovodrun("sh", "-c", command, env=clean_env(), timeout=300)
    return base, proc


@pytest.mark.slow
@needs_horovod
def test_two_ranks_end_with_identical_weights_and_only_rank_0_writes(reference):
    base, proc = reference
    final = digests(proc.stdout)
    assert set(final) == {0, 1}, proc.stdout[-3000:]
    assert final[0] == final[1] and final[0][0] == STEPS
    assert not (base / "ref1").exists(), os.listdir(base / "ref1")
    for path in ("checkpoints/latest", "metrics.jsonl", "config.json", "export/model.keras"):
        assert (base / "ref0" / path).exists(), path
    assert max(losses(base / "ref0")) == STEPS
    rates = {r["step"]: r["learning_rate"] for r in read_metrics(base / "ref0") if "loss" in r}
    assert rates[10] == pytest.approx(2 * LR * 11 / WARMUP)  # scaled by 2 ranks, warming up
    assert rates[STEPS] == pytest.approx(2 * LR)


@pytest.mark.slow
@needs_horovod
def test_horovod_and_multiworker_give_the_same_loss_trajectory(reference, tmp_path, data_dir):
    base, _ = reference
    steps = 60
    run(
        [
            sys.executable,
            "-m",
            "launch",
            "--nproc",
            "2",
            "--",
            sys.executable,
            "-m",
            "train",
            "--strategy",
            "multiworker",
            "--workdir",
            str(tmp_path / "mw"),
            "--data-dir",
            data_dir,
            *FLAGS,
            "--steps",
            str(steps),
            "--no-export",
        ],
        env=clean_env(),
        timeout=240,
    )
    multiworker = losses(tmp_path / "mw")
    horovod = {s: loss for s, loss in losses(base / "ref0").items() if s <= steps}
    assert sorted(multiworker) == sorted(horovod) == list(range(10, steps + 1, 10))
    for step in horovod:
        assert multiworker[step] == pytest.approx(horovod[step], rel=LOSS_RTOL), step


@pytest.mark.slow
@needs_horovod
def test_kill_9_of_one_rank_restarts_and_resumes_bitwise(reference, tmp_path, data_dir):
    """harness-launch --backend horovod restarts horovodrun; the run resumes from the
    newest checkpoint and ends bitwise-equal to the uninterrupted run."""
    _, ref_proc = reference
    workdir = tmp_path / "run"
    tag = uuid.uuid4().hex
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch",
            "--backend",
            "horovod",
            "--nproc",
            "2",
            "--max-restarts",
            "1",
            "--restart-backoff",
            "0.2",
            "--",
            *train_argv(workdir, data_dir, "--steps", str(STEPS), "--no-export"),
        ],
        cwd=REPO,
        env=clean_env(tag),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = signal_rank_1(
        launcher,
        tag,
        lambda: (workdir / "checkpoints" / "latest").exists(),
        "the first checkpoint",
        signal.SIGKILL,
        timeout=240,
    )
    assert launcher.returncode == 0, f"{out[-3000:]}\n{err[-3000:]}"
    assert "restart 1/1" in err, err[-3000:]
    rows = read_metrics(workdir)
    resumes = [r for r in rows if r.get("event") == "resume"]
    assert len(resumes) == 1 and resumes[0]["restored_step"] >= 20, resumes
    final = digests(out)
    assert final[0] == final[1] == digests(ref_proc.stdout)[0], (final, digests(ref_proc.stdout))


@pytest.mark.slow
@needs_horovod
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, data_dir):
    """The stop flag rides on the per-step allreduce: rank 1 is signalled, rank 0 (the
    chief) leaves after the same step and saves there. (Also: --jit-compile is accepted;
    the Horovod step runs unjitted, as its ops have no XLA kernels in this build.)"""
    workdir = tmp_path / "run"
    tag = uuid.uuid4().hex
    proc = subprocess.Popen(
        [
            HOROVODRUN,
            "--gloo",
            "-np",
            "2",
            "-H",
            "localhost:2",
            *train_argv(
                workdir,
                data_dir,
                "--steps",
                "2000",
                "--checkpoint-every",
                "1000",
                "--no-export",
                "--jit-compile",
            ),
        ],
        cwd=REPO,
        env=clean_env(tag),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A logged step: both ranks are past installing their signal handlers.
    out, err = signal_rank_1(
        proc, tag, lambda: logged(workdir), "the first log row", signal.SIGUSR1, timeout=120
    )
    stopped = dict(re.findall(r"^\[(\d)\]<stdout>:\s*preempted\s+step=(\d+)", out, re.M))
    assert set(stopped) == {"0", "1"} and stopped["0"] == stopped["1"], out[-3000:]
    step = int(stopped["0"])
    assert (workdir / "checkpoints" / "latest").read_text().strip() == f"ckpt-{step:08d}"
    events = [r for r in read_metrics(workdir) if r.get("event") == "preempted"]
    assert [(e["step"], e["signal"]) for e in events] == [(step, "peer")]
    # horovodrun reports any non-zero rank exit as 1 (the ranks exited 42).
    assert err.count("preempted at step") == 2


@pytest.mark.slow
@needs_horovod
def test_sigterm_to_the_launcher_ends_in_42_through_horovodrun(tmp_path, data_dir):
    """horovodrun reports the ranks' 42 as 1; the ranks' recorded codes restore the 42."""
    workdir = tmp_path / "run"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "launch",
            "--backend",
            "horovod",
            "--nproc",
            "2",
            "--",
            *train_argv(
                workdir, data_dir, "--steps", "2000", "--checkpoint-every", "1000", "--no-export"
            ),
        ],
        cwd=REPO,
        env=clean_env(uuid.uuid4().hex),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: logged(workdir), launcher, 180, "the first log row")
        launcher.send_signal(signal.SIGTERM)
        out, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.communicate()
    assert launcher.returncode == 42, f"{out[-3000:]}\n{err[-3000:]}"
    events = [r for r in read_metrics(workdir) if r.get("event") == "preempted"]
    assert len(events) == 1
    latest = (workdir / "checkpoints" / "latest").read_text().strip()
    assert latest == f"ckpt-{events[0]['step']:08d}"
