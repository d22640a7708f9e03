"""harness-launch: start and supervise the worker processes of one training run.

Modelled on torchrun / horovodrun, not a cluster manager: it starts processes on this
host only and never uses a remote shell (with `--backend horovod`, horovodrun does).

    harness-launch --nproc 2 -- python -m train ...              # two local workers
    harness-launch --nproc 4 --hosts h1:2,h2:2 --node-rank 1 -- ...  # on h2
    srun --ntasks-per-node=1 harness-launch --nproc 8 -- ...     # Slurm, one per node

Rooms:
  cli         flag parsing; bad input -> one line on stderr and exit 2
  cluster     who runs where: hosts, node rank, ports (slurm: Slurm's view); TF_CONFIG,
              the rank rule and the HARNESS_* names are train.cluster's, shared with train
  plan        what each process runs: argv and environment, per attempt
  supervisor  start, watch, stop and restart the group; exit codes
  relay       prefixed output lines and forwarded signals

What a worker gets (backend multiworker): TF_CONFIG (worker 0 is the chief),
HARNESS_RANK, HARNESS_WORLD_SIZE, HARNESS_LOCAL_RANK, HARNESS_LOCAL_WORLD_SIZE and
HARNESS_RESTART_COUNT.

Exit codes (train.errors): 0 every worker finished; 42 the run was stopped by a signal
and every worker saved and exited 42 (requeue it), or restarts ran out on a preemption;
2 bad usage (the launcher's, or a worker's, which is not restarted); otherwise the
failing worker's code (128+S for a worker killed by signal S), or 1.
"""
