"""The checkpointed state and the arguments of CheckpointManager, validated: its groups
of variables with their shapes, dtypes and names, a step, the JSON `meta`.
"""

import json
import operator
import re
from collections.abc import Mapping

import tensorflow as tf

from train.errors import UsageError

_GROUP = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def describe_state(state):
    """({group: [variables]}, {group: [(shape, dtype)]}, {group: [name]}) or UsageError."""
    if not isinstance(state, Mapping) or not state:
        raise UsageError("checkpoint state must be a non-empty mapping: group -> variables")
    groups, specs, names, seen = {}, {}, {}, {}
    for group, variables in state.items():
        if not (isinstance(group, str) and _GROUP.fullmatch(group)) or hasattr(
            tf.train.Checkpoint, group
        ):
            raise UsageError(f"checkpoint state group {group!r}: use a name like 'model'")
        groups[group], specs[group], names[group] = list(variables), [], []
        for i, v in enumerate(groups[group]):
            where = f"{group}[{i}]"
            names[group].append(getattr(v, "path", None) or getattr(v, "name", where))
            if id(v) in seen:  # a checkpoint stores an object once: the twins would not fit
                raise UsageError(
                    f"checkpoint state lists {names[group][-1]} twice ({seen[id(v)]} and {where})"
                )
            seen[id(v)] = where
            try:
                specs[group].append((tuple(int(d) for d in v.shape), tf.as_dtype(v.dtype).name))
            except (AttributeError, TypeError, ValueError):
                raise UsageError(
                    f"checkpoint state {where} is not a built variable: {v!r:.80}"
                ) from None
    return groups, specs, names


def as_step(step):
    try:
        if not isinstance(step, bool) and operator.index(step) >= 0:
            return operator.index(step)  # also numpy / scalar tensor integers
    except TypeError:
        pass
    raise UsageError(f"checkpoint step must be an integer >= 0, got {step!r}")


def json_copy(meta):
    # A copy now: a later change to the caller's dict must not reach the manifests.
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"checkpoint meta must be JSON-serializable: {exc}") from None
