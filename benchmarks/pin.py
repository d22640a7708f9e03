"""Pin one worker to its share of the CPUs, then exec its command:

    python -m benchmarks.pin --cpus-per-worker K -- python -m train ...

The worker's local rank comes from the launcher (HARNESS_LOCAL_RANK) or horovodrun
(HOROVOD_LOCAL_RANK). Local rank r gets CPUs [r*K, (r+1)*K) of the CPUs this process may
use (os.sched_setaffinity, inherited across exec), and TensorFlow is told to size its
thread pools to match (TF_NUM_INTRAOP_THREADS=K; the inter-op and tf.data pools follow
the affinity mask by default). K is the same for every configuration of one scaling
run (CPUs / largest worker count), so a worker has the same resources whether it runs
alone or beside others: the 1-worker baseline is one worker on K CPUs, not on all.
"""

import os
import sys

RANK_VARIABLES = ("HARNESS_LOCAL_RANK", "HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK")


def local_rank(env):
    for name in RANK_VARIABLES:
        if env.get(name, "").isdigit():
            return int(env[name])
    return 0


def cpus_for(rank, per_worker, available):
    """The CPUs of local rank `rank`: a contiguous slice, wrapping if there are too few."""
    available = sorted(available)
    return [available[(rank * per_worker + i) % len(available)] for i in range(per_worker)]


def main(argv):
    if len(argv) < 4 or argv[0] != "--cpus-per-worker" or argv[2] != "--":
        print("usage: python -m benchmarks.pin --cpus-per-worker K -- COMMAND...",
              file=sys.stderr)
        return 2
    per_worker, command = int(argv[1]), argv[3:]
    cpus = cpus_for(local_rank(os.environ), per_worker, os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(per_worker)
    os.environ["HARNESS_BENCH_CPUS"] = ",".join(map(str, cpus))  # for the record
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
