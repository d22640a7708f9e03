"""What each process of one attempt runs: its argv, its environment, its output label.

Invariants:
- A plan is asked afresh for every attempt: `HARNESS_RESTART_COUNT` is that attempt's
  restart number, and a single-host run gets new free ports each time.
- multiworker: one process per local worker. TF_CONFIG lists the whole cluster and its
  task.index is the worker's global rank, which is also `HARNESS_RANK` and its prefix.
- horovod: one process, horovodrun, which starts (and prefixes) every rank itself, on
  the other hosts too (over its own ssh); so it runs from one launcher only.
- A TF_CONFIG already in the environment (a Kubernetes TFJob, say) describes one task:
  it is kept as is for `--nproc 1` on one host (the launcher then only restarts that
  task), and refused anywhere else rather than silently replaced.
- `PYTHONUNBUFFERED=1` unless set: output reaches the prefixer line by line, and the
  last lines of a worker that is killed are not lost in its buffer.
"""

import functools
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

from train import cluster
from train.errors import EXIT_OK, EXIT_PREEMPTED, UsageError

HOROVOD_MISSING = (
    "horovod is not installed; build it with: bash launch/build_horovod.sh "
    ".venv/bin/python (see README)"
)
# horovodrun turns any failing rank into its own exit 1; each rank of harness-train
# records its real exit code there (train.cli), so a preemption still ends in 42.
EXIT_CODES_ENV = cluster.EXIT_CODE_DIR_ENV


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    rank: int
    label: str  # names it in the launcher's event lines: "worker 1", "horovodrun"
    argv: tuple[str, ...]
    env: dict = field(hash=False)  # the whole environment; not to be mutated
    prefix: str = ""  # put before each output line: "[1] "
    exit_codes_dir: str | None = None  # horovod: where ranks record their exit codes


def resolve_command(command):
    """The command to run: its program must exist and be executable (exit 2 now, not N
    times); a bare name found only beside this Python (an unactivated venv's bin) runs
    from there, so `.venv/bin/harness-launch ... -- harness-train ...` works."""
    if not command:
        raise UsageError(
            "no command given: put it after --, e.g. "
            "harness-launch --nproc 2 -- python -m train ..."
        )
    program = command[0]
    if shutil.which(program):
        return tuple(command)
    beside = _beside_python(program)
    if beside:
        return (beside, *command[1:])
    if os.sep in program and os.path.exists(program):
        raise UsageError(f"command is not executable: {program}")
    raise UsageError(f"command not found: {program}")


def _beside_python(program):
    if os.sep in program:
        return None
    return shutil.which(program, path=os.path.dirname(sys.executable))


def make_plan(*, backend, spec, command, env, mpi=False):
    """A function restart_count -> [WorkerSpec], for the supervisor."""
    existing = cluster.existing_tf_config(env)
    if backend == "horovod":
        if existing is not None:
            raise UsageError(
                "TF_CONFIG is set in the environment: unset it for "
                "--backend horovod (the workers would take it for a cluster)"
            )
        argv = horovod_argv(
            horovodrun=find_horovodrun(),
            spec=spec,
            command=command,
            mpi=mpi,
            mpirun=shutil.which("mpirun"),
        )
        return functools.partial(_horovod_workers, argv=argv, env=env)
    if mpi:
        raise UsageError("--mpi applies to --backend horovod only")
    if existing is not None:
        if spec.world_size != 1 or spec.source != "local":
            raise UsageError(
                "TF_CONFIG is set in the environment and already describes "
                "a cluster: unset it, or supervise that one task with --nproc 1"
            )
        return functools.partial(
            _kept_tf_config_worker, config=existing, command=tuple(command), env=env
        )
    return functools.partial(_multiworker_workers, spec=spec, command=tuple(command), env=env)


def _multiworker_workers(restart, *, spec, command, env):
    addresses = spec.worker_addresses()
    workers = []
    for local_rank in range(spec.local_size):
        rank = spec.rank_offset + local_rank
        worker_env = _with_defaults(env) | harness_env(
            rank=rank,
            world_size=spec.world_size,
            local_rank=local_rank,
            local_size=spec.local_size,
            restart=restart,
        )
        worker_env[cluster.TF_CONFIG_ENV] = cluster.tf_config(addresses, rank)
        workers.append(
            WorkerSpec(
                rank=rank, label=f"worker {rank}", argv=command, env=worker_env, prefix=f"[{rank}] "
            )
        )
    return workers


def _kept_tf_config_worker(restart, *, config, command, env):
    rank, world = cluster.task_rank(config)  # as the trainer counts: the chief first
    worker_env = _with_defaults(env) | harness_env(
        rank=rank, world_size=world, local_rank=0, local_size=1, restart=restart
    )
    return [
        WorkerSpec(
            rank=rank, label=f"worker {rank}", argv=command, env=worker_env, prefix=f"[{rank}] "
        )
    ]


def _horovod_workers(restart, *, argv, env):
    # horovodrun sets HOROVOD_RANK & co. per rank and prefixes their output itself.
    exit_codes_dir = tempfile.mkdtemp(prefix="harness-exits-")
    worker_env = _with_defaults(env) | {
        cluster.RESTART_COUNT_ENV: str(restart),
        EXIT_CODES_ENV: exit_codes_dir,
    }
    return [
        WorkerSpec(
            rank=0, label="horovodrun", argv=argv, env=worker_env, exit_codes_dir=exit_codes_dir
        )
    ]


def recorded_exit_code(directory, code):
    """horovodrun's exit code, or 42 when every rank that recorded one saved and exited
    42 (or 0). The directory is removed: it belongs to one attempt."""
    try:
        recorded = []
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                recorded.append(int(f.read().strip() or -1))
        shutil.rmtree(directory, ignore_errors=True)
    except (OSError, ValueError):
        return code
    preempted = EXIT_PREEMPTED in recorded and set(recorded) <= {EXIT_OK, EXIT_PREEMPTED}
    if code != EXIT_OK and preempted:
        return EXIT_PREEMPTED
    return code


def harness_env(*, rank, world_size, local_rank, local_size, restart):
    return {
        cluster.RANK_ENV: str(rank),
        cluster.WORLD_SIZE_ENV: str(world_size),
        cluster.LOCAL_RANK_ENV: str(local_rank),
        cluster.LOCAL_WORLD_SIZE_ENV: str(local_size),
        cluster.RESTART_COUNT_ENV: str(restart),
    }


def _with_defaults(env):
    return {"PYTHONUNBUFFERED": "1"} | dict(env)


def find_horovodrun():
    """horovodrun on PATH, else beside this Python (a venv run without activating it)."""
    found = shutil.which("horovodrun") or _beside_python("horovodrun")
    if found is None:
        raise UsageError(HOROVOD_MISSING)
    return found


def horovod_argv(*, horovodrun, spec, command, mpi, mpirun):
    """horovodrun's command line: Gloo unless --mpi is asked for and mpirun exists."""
    if spec.node_rank != 0:
        raise UsageError(
            f"--node-rank {spec.node_rank}: with --backend horovod run "
            "harness-launch on the first host only; horovodrun starts the "
            "other hosts' ranks itself"
        )
    if mpi and mpirun is None:
        raise UsageError("--mpi: mpirun is not installed (leave --mpi out to use Gloo)")
    hosts = ",".join(f"{host.name}:{host.slots}" for host in spec.hosts)
    return (
        horovodrun,
        "--mpi" if mpi else "--gloo",
        "-np",
        str(spec.world_size),
        "-H",
        hosts,
        *command,
    )
