"""Retention (no TensorFlow here): which checkpoints a save deletes, and deleting them.

The rule (the `keep` newest, the one `latest` names, every keep_forever one) is stated
once, in train.checkpoint.manager.
"""

import os

from train.checkpoint.files import describe, parse_step, remove_dir
from train.checkpoint.manifest import read_manifests


def apply_retention(directory, *, keep, current, fault, warn, cache=None):
    for name in doomed(read_manifests(directory, cache), keep=keep, current=current):
        try:
            remove_dir(directory, name, fault=fault)
        except OSError as exc:  # the save itself succeeded: warn, do not fail training
            warn(
                f"could not delete old checkpoint {os.path.join(directory, name)}: {describe(exc)}"
            )


def kept_forever(manifests):
    """{name: save time} of the checkpoints marked keep_forever."""
    return {n: m["time"] for n, m in manifests.items() if m and m.get("keep_forever") is True}


def doomed(manifests, *, keep, current):
    """Names retention deletes: all but the `keep` newest by save time (a damaged manifest
    counts as oldest), `current`, and those marked keep_forever."""

    def age(name):
        m = manifests[name]
        return (m["time"], m["step"]) if m else (float("-inf"), parse_step(name))

    ordered = sorted(manifests, key=age, reverse=True)
    kept = set(ordered[:keep]) | {current} | set(kept_forever(manifests))
    return [n for n in reversed(ordered) if n not in kept]
