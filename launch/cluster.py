"""Who runs where: the cluster spec of one harness-launch run.

Invariants:
- `--nproc` is the world size, every host's workers together (like `horovodrun -np` and
  `mpirun -np`; not torchrun's per-node count). With hosts it must equal their slots.
- Global ranks follow host order, then local index: node K's ranks start after the slots
  of nodes 0..K-1. Rank 0, the chief, is local worker 0 of node 0.
- Every launcher of a multi-host run derives the same spec from the same flags, so ports
  there are deterministic: `--master-port` + local index, on every host. Only a
  single-host run without hosts picks free ports, fresh for each attempt.
- Slurm is read here, in the launcher, not left to `SlurmClusterResolver` in the
  workers: the resolver wants one Slurm task per worker, i.e. srun owns the processes
  and nothing could restart or prefix them. So under Slurm, run one launcher per node
  (`srun --ntasks-per-node=1 harness-launch --nproc WORLD -- ...`); the workers still
  get a plain TF_CONFIG. (`srun -n WORLD harness-train ...` without the launcher keeps
  working through the resolver in train.distribute.strategies.)
- TF_CONFIG itself (building and checking it), the rank rule and the HARNESS_* variable
  names are train.cluster's: one contract shared with the workers.
- Bad input raises `UsageError` with one line that names the flag or variable.
"""

import re
import socket
from dataclasses import dataclass

from launch import slurm
from train.errors import UsageError

DEFAULT_MASTER_PORT = 29500  # torchrun's default
LOCALHOST = "localhost"

_HOST_ENTRY = re.compile(r"^([^\s:,\[\]]+):(\d+)$")
_HOSTFILE_LINE = re.compile(r"^([^\s:]+)(?::(\d+)|\s+slots=(\d+))$")


@dataclass(frozen=True, kw_only=True)
class Host:
    name: str
    slots: int


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """The whole cluster, and which node of it this launcher is."""

    hosts: tuple[Host, ...]
    node_rank: int = 0
    master_port: int | None = None  # None: one local host, free ports for each attempt
    source: str = "local"

    @property
    def world_size(self):
        return sum(host.slots for host in self.hosts)

    @property
    def local_size(self):
        return self.hosts[self.node_rank].slots

    @property
    def rank_offset(self):
        return sum(host.slots for host in self.hosts[: self.node_rank])

    def worker_addresses(self):
        """host:port of every worker in global rank order; a local spec binds new ports."""
        if self.master_port is None:
            return [f"{LOCALHOST}:{port}" for port in free_ports(self.world_size)]
        return [
            f"{host.name}:{self.master_port + index}"
            for host in self.hosts
            for index in range(host.slots)
        ]


def resolve(
    *,
    nproc,
    hosts=None,
    hostfile=None,
    node_rank=None,
    master_port=None,
    env,
    hostname=None,
    launcher_per_node=True,
):
    """The spec for these flags and this environment (Slurm, when no hosts are given).

    launcher_per_node=False is horovodrun's model: one launcher, on the first host,
    starts every host's ranks; so there is no node rank to find.
    """
    if hosts and hostfile:
        raise UsageError("use either --hosts or --hostfile, not both")
    if nproc is not None and nproc < 1:
        raise UsageError(f"--nproc must be at least 1 (got {nproc})")
    listed, source = _listed_hosts(hosts, hostfile, env, nproc, launcher_per_node)
    if listed is None:
        return _local_spec(nproc, node_rank, master_port)
    if nproc is not None and nproc != sum(host.slots for host in listed):
        raise UsageError(
            f"--nproc {nproc} does not match the "
            f"{sum(host.slots for host in listed)} slots of {source}"
        )
    if not launcher_per_node:
        node_rank = node_rank or 0
    elif node_rank is None:
        node_rank = _node_rank_here(listed, source, env, hostname, given=bool(hosts or hostfile))
    _check_node_rank(node_rank, len(listed), source)
    port = DEFAULT_MASTER_PORT if master_port is None else master_port
    _check_ports(port, max(host.slots for host in listed))
    return ClusterSpec(hosts=listed, node_rank=node_rank, master_port=port, source=source)


def _node_rank_here(listed, source, env, hostname, *, given):
    """This host's index in `listed`: Slurm's node id, else found by host name."""
    slurm_node_id = None if given else env.get("SLURM_NODEID")
    name = hostname or env.get("SLURMD_NODENAME") or socket.gethostname()
    return _infer_node_rank(listed, name, source, slurm_node_id)


def _listed_hosts(hosts, hostfile, env, nproc, launcher_per_node):
    if hosts:
        return parse_hosts(hosts), "--hosts"
    if hostfile:
        return parse_hostfile(hostfile), f"--hostfile {hostfile}"
    return slurm_hosts(env, nproc=nproc, launcher_per_node=launcher_per_node), "the Slurm job"


def _local_spec(nproc, node_rank, master_port):
    if nproc is None:
        raise UsageError("--nproc is required (how many workers to start)")
    if node_rank:
        raise UsageError(f"--node-rank {node_rank} needs --hosts or --hostfile")
    if master_port is not None:
        _check_ports(master_port, nproc)  # a fixed port range asked for explicitly
    return ClusterSpec(hosts=(Host(name=LOCALHOST, slots=nproc),), master_port=master_port)


def _check_node_rank(node_rank, count, source):
    if not 0 <= node_rank < count:
        raise UsageError(
            f"--node-rank {node_rank} is out of range: {source} lists "
            f"{count} host(s), so it must be 0..{count - 1}"
        )


def _check_ports(port, slots):
    if port < 1 or port + slots - 1 > 65535:
        raise UsageError(
            f"--master-port {port}: ports {port}..{port + slots - 1} must lie within 1..65535"
        )


def _infer_node_rank(hosts, hostname, source, slurm_node_id):
    """This host's index: by name (also its short name), else Slurm's SLURM_NODEID."""
    if len(hosts) == 1:
        return 0
    names = [host.name for host in hosts]
    for candidate in (hostname, hostname.split(".")[0]):
        matches = [
            i
            for i, name in enumerate(names)
            if name == candidate or name.split(".")[0] == candidate
        ]
        if len(matches) == 1:
            return matches[0]
    if slurm_node_id is not None and slurm_node_id.isdigit():
        return int(slurm_node_id)
    raise UsageError(
        f"--node-rank is required: this host ({hostname}) is not one of the hosts of {source}"
    )


def parse_hosts(text):
    """'h1:2,h2:2' -> hosts with slots; every entry needs its slots."""
    entries = [entry.strip() for entry in text.split(",")]
    hosts = []
    for entry in entries:
        match = _HOST_ENTRY.match(entry)
        if not match:
            raise UsageError(
                f"--hosts {text!r}: expected host:slots[,host:slots...], got {entry!r}"
            )
        hosts.append(_host(match.group(1), match.group(2), f"--hosts {text!r}"))
    return _unique(hosts, "--hosts")


def parse_hostfile(path):
    """Lines 'host slots=N' or 'host:N'; blank lines and '#' comments are skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--hostfile {path}: cannot read it ({_reason(error)})") from None
    hosts = []
    for number, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOSTFILE_LINE.match(line)
        if not match:
            raise UsageError(
                f"--hostfile {path} line {number}: expected 'host slots=N' "
                f"or 'host:N', got {line!r}"
            )
        slots = match.group(2) or match.group(3)
        hosts.append(_host(match.group(1), slots, f"--hostfile {path} line {number}"))
    if not hosts:
        raise UsageError(f"--hostfile {path} lists no hosts")
    return _unique(hosts, f"--hostfile {path}")


def _reason(error):
    return getattr(error, "strerror", None) or str(error)


def _host(name, slots, where):
    if int(slots) < 1:
        raise UsageError(f"{where}: host {name} needs at least 1 slot (got {slots})")
    return Host(name=name, slots=int(slots))


def _unique(hosts, where):
    # Two entries for one host would give two workers the same host:port.
    names = [host.name for host in hosts]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(
            f"{where}: host {repeated[0]} is listed twice; give it one entry with all its slots"
        )
    return tuple(hosts)


def slurm_hosts(env, *, nproc, launcher_per_node=True):
    """Hosts of the Slurm job step, nproc/nodes slots each; None outside a multi-node job."""
    names = slurm.job_nodes(env)
    if names is None or len(names) < 2:
        return None  # no Slurm, or one node: a local run with free ports
    if launcher_per_node:
        slurm.check_one_launcher_per_node(env, len(names))
    if nproc is None:
        raise UsageError(
            f"--nproc is required: the world size over the Slurm job's {len(names)} nodes"
        )
    if nproc % len(names):
        raise UsageError(
            f"--nproc {nproc} does not split evenly over the Slurm job's {len(names)} nodes"
        )
    return _unique(
        [Host(name=name, slots=nproc // len(names)) for name in names], "the Slurm nodelist"
    )


def free_ports(count):
    """`count` distinct ports free right now; all held open at once so none repeats."""
    sockets = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(probe)
            probe.bind(("", 0))
        return [probe.getsockname()[1] for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()
