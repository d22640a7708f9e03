"""harness-launch's command line: flags in, a cluster spec, a plan and a supervisor out.

Invariants:
- Everything after the first `--` is the workers' command, passed on untouched.
- Bad input of any kind ends with exactly one line on stderr, naming the flag, and
  exit 2; never a traceback or argparse's usage block.
- Nothing is started before every check has passed.
"""

import argparse
import os
import sys

from launch import cluster, plan, supervisor
from train.errors import ArgumentParser, HarnessError, UsageError

_EPILOG = """\
--nproc is the world size (all hosts together), like horovodrun -np. With --hosts or
--hostfile, this launcher starts only its own node's workers (--node-rank, else found
by host name) on ports --master-port + local index; under Slurm, run one launcher per
node with 'srun --ntasks-per-node=1'. A signal sent to the launcher (SIGTERM, SIGINT,
SIGUSR1) is forwarded to the workers and ends the run without a restart: it exits 42
when every worker saved and exited 42, so the scheduler can requeue it.
"""


class _Parser(ArgumentParser):
    def error(self, message):
        if message.startswith("unrecognized arguments"):
            message += " (the workers' command goes after --)"
        super().error(message)


def _parser():
    parser = _Parser(
        prog="harness-launch",
        allow_abbrev=False,
        epilog=_EPILOG,
        usage="%(prog)s --nproc N [options] -- COMMAND [ARGS...]",
        description="Start and supervise the workers of a training run.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_cluster_flags(parser.add_argument)
    _add_supervision_flags(parser.add_argument)
    return parser


def _add_cluster_flags(add):
    """Who runs where: the workers, the backend, the hosts."""
    add(
        "--nproc",
        type=int,
        metavar="N",
        help="number of workers in all (default with hosts: their slots)",
    )
    add(
        "--backend",
        choices=("multiworker", "horovod"),
        default="multiworker",
        help="multiworker: one process per worker with TF_CONFIG (default); "
        "horovod: run horovodrun",
    )
    add("--mpi", action="store_true", help="horovod: use MPI (mpirun) instead of Gloo")
    add("--hosts", metavar="HOST:SLOTS,...", help="every node with its slots, in rank order")
    add("--hostfile", metavar="FILE", help="file with lines 'host slots=N' or 'host:N'")
    add(
        "--node-rank",
        type=int,
        metavar="K",
        help="this host's index in the hosts (default: found by host name)",
    )
    add(
        "--master-port",
        type=int,
        metavar="PORT",
        help=f"first worker port on each host (default {cluster.DEFAULT_MASTER_PORT} with "
        "hosts; free ports on one host)",
    )


def _add_supervision_flags(add):
    """How the group is restarted and stopped."""
    add(
        "--max-restarts", type=int, default=3, metavar="R", help="restarts of the group (default 3)"
    )
    add(
        "--restart-backoff",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="wait before the first restart; doubles each time, up to "
        f"{supervisor.BACKOFF_CAP_SECONDS:g} (default 1)",
    )
    add(
        "--stop-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="SIGTERM to SIGKILL when stopping the group (default 30)",
    )


def parse(argv):
    """(flags, command) from argv; UsageError on anything wrong with the flags."""
    split = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:split])
    for flag, value, least in (
        ("--max-restarts", args.max_restarts, 0),
        ("--restart-backoff", args.restart_backoff, 0),
        ("--node-rank", args.node_rank, 0),
    ):
        if value is not None and not value >= least:  # `not >=` also refuses NaN
            raise UsageError(f"{flag} must be at least {least} (got {value})")
    if not args.stop_timeout > 0:
        raise UsageError(f"--stop-timeout must be more than 0 (got {args.stop_timeout})")
    return args, argv[split + 1 :]


def run(argv, env=None):
    env = dict(os.environ if env is None else env)
    args, command = parse(argv)
    spec = cluster.resolve(
        nproc=args.nproc,
        hosts=args.hosts,
        hostfile=args.hostfile,
        node_rank=args.node_rank,
        master_port=args.master_port,
        env=env,
        launcher_per_node=args.backend != "horovod",
    )
    command = plan.resolve_command(command)
    make_workers = plan.make_plan(
        backend=args.backend, spec=spec, command=command, env=env, mpi=args.mpi
    )
    options = supervisor.Options(
        max_restarts=args.max_restarts,
        restart_backoff=args.restart_backoff,
        stop_timeout=args.stop_timeout,
    )
    return supervisor.supervise(make_workers=make_workers, options=options)


def main(argv=None):
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except HarnessError as error:
        print(f"harness-launch: error: {error}", file=sys.stderr)
        return error.exit_code
