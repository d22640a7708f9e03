"""What a Slurm job says about its nodes, read from the environment.

Invariants:
- The nodelist is the job step's (`SLURM_STEP_NODELIST`) when there is one, so a step
  on part of an allocation sees only its nodes; else the job's.
- Every node expands the same nodelist string the same way, so all launchers agree on
  the host order, hence on global ranks.
- The only process started here is `scontrol show hostnames`, the fallback for a
  nodelist the small parser refuses; it is Slurm's own answer, so it is trusted as is.
- Why the launcher reads Slurm itself rather than leaving it to TensorFlow's
  `SlurmClusterResolver` in the workers: see launch.cluster.
"""

import itertools
import re
import shutil
import subprocess

from train.errors import UsageError

_BRACKETS = re.compile(r"\[([^\[\]]*)\]|([^\[\]]+)")


def job_nodes(env):
    """Host names of this Slurm job (step), in Slurm's order; None outside Slurm."""
    nodelist = (
        env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    )
    if "SLURM_JOB_ID" not in env or not nodelist:
        return None
    return hostnames(nodelist)


def check_one_launcher_per_node(env, nodes):
    """Refuse what would hang: a launcher in the batch script, or several per node."""
    # A batch script runs on the first node only: started there, the launcher would
    # start that node's share of the workers and wait forever for the others.
    step_nodes, step_tasks = env.get("SLURM_STEP_NUM_NODES"), env.get("SLURM_STEP_NUM_TASKS")
    if step_nodes is None:
        raise UsageError(
            f"this Slurm job has {nodes} nodes: start one harness-launch per "
            "node with 'srun --ntasks-per-node=1 harness-launch ...'"
        )
    if step_tasks is not None and step_tasks != step_nodes:
        raise UsageError(
            f"this Slurm step runs {step_tasks} tasks on {step_nodes} nodes: "
            "start exactly one harness-launch per node (srun --ntasks-per-node=1)"
        )


def hostnames(nodelist):
    """Expand a Slurm nodelist; `scontrol show hostnames` for what the parser refuses."""
    try:
        return expand_nodelist(nodelist)
    except ValueError:
        pass
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            done = subprocess.run(
                [scontrol, "show", "hostnames", nodelist],
                timeout=30,
                capture_output=True,
                text=True,
                check=True,
            )
            return done.stdout.split()
        except (OSError, subprocess.SubprocessError):
            pass
    raise UsageError(
        f"cannot expand the Slurm nodelist {nodelist!r} (nor could scontrol); pass --hosts instead"
    )


def expand_nodelist(text):
    """'node[01-03],gpu5' -> node01 node02 node03 gpu5; ValueError if it is not simple."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ValueError(f"unbalanced or nested brackets in {text!r}")
        if char == "," and depth == 0:
            items.append(text[start:index].strip())
            start = index + 1
    if depth or not all(items):
        raise ValueError(f"unclosed bracket or empty entry in nodelist {text!r}")
    return [name for item in items for name in _expand_item(item)]


def _expand_item(item):
    # 'rack[1-2]-n[1-2]' is the cartesian product, as Slurm's hostlist has it.
    parts = _BRACKETS.findall(item)
    if "".join(f"[{group}]" if group else plain for group, plain in parts) != item:
        raise ValueError(f"malformed nodelist entry {item!r}")
    choices = [_expand_ranges(group) if group else [plain] for group, plain in parts]
    return ["".join(combination) for combination in itertools.product(*choices)]


def _expand_ranges(group):
    names = []
    for piece in group.split(","):
        low, _, high = piece.strip().partition("-")
        high = high or low
        if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
            raise ValueError(f"malformed range {piece!r}")
        # Slurm keeps the zero padding of the lower bound: [08-10] -> 08 09 10.
        names.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return names
