"""The checkpoint directory (no TensorFlow here): names, the `latest` pointer, listing,
install, deletion, leftovers, and the choice of what to restore.

The invariants these functions serve (who writes, what is atomic) are stated once, in
train.checkpoint.manager.
"""

import os
import re
import shutil

from train import durable
from train.checkpoint.faults import crash_if
from train.errors import CheckpointError

POINTER = "latest"
STATE_PREFIX = "state"  # tf.train.Checkpoint writes state.index + state.data-*
TMP_PREFIX = ".tmp-"
_NAME = re.compile(r"ckpt-(\d{8,})")
_WRAPPED_OP = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


class Damaged(Exception):
    """A checkpoint that cannot be trusted; the message says why (one line)."""


def ckpt_name(step):
    return f"ckpt-{step:08d}"


def parse_step(name):
    """Step of a `ckpt-XXXXXXXX` name, or None for any other name."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def describe(exc):
    """One line for an exception: 'No space left on device (/path)' rather than a repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    message = _WRAPPED_OP.sub("", message)  # the op's internal name says nothing to users
    return " ".join(message.split())


def stage_text(directory, name, text):
    """Write text to a tmp file beside directory/name (not yet fsynced); its path."""
    tmp = os.path.join(directory, f"{TMP_PREFIX}{name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return tmp


def commit_text(directory, staged, name):
    """Atomically replace directory/name by the fsynced file `staged`; fsync directory."""
    os.replace(staged, os.path.join(directory, name))
    durable.fsync(directory)


def read_pointer(directory):
    """(name the pointer names or None, problem or None); (None, None) when there is none."""
    try:
        with open(os.path.join(directory, POINTER), "rb") as f:
            raw = f.read(256)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"pointer {POINTER!r} is unreadable: {describe(exc)}"
    text = raw.decode("utf-8", errors="replace").strip()
    if not text:
        return None, f"pointer {POINTER!r} is empty"
    if parse_step(text) is None:
        return None, f"pointer {POINTER!r} holds garbage: {text[:40]!r}"
    if not os.path.isdir(os.path.join(directory, text)):
        return None, f"pointer {POINTER!r} names {text}, which does not exist"
    return text, None


def list_checkpoints(directory):
    """{step: name} of every ckpt-* directory (valid or not); {} if directory is missing."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return {}
    except OSError as exc:  # not a directory, no permission: the workdir is unusable
        raise CheckpointError(
            f"cannot read checkpoint directory {directory}: {describe(exc)}"
        ) from None
    return {
        parse_step(n): n
        for n in names
        if parse_step(n) is not None and os.path.isdir(os.path.join(directory, n))
    }


def remove_dir(directory, name, *, fault=None):
    """Delete directory/name so that a crash midway never leaves a half-deleted ckpt-* dir.

    The rename to a .tmp- name is atomic; whatever rmtree leaves behind after a crash is a
    leftover that the next chief start removes.
    """
    doomed = os.path.join(directory, f"{TMP_PREFIX}deleting-{name}-{os.getpid()}")
    os.rename(os.path.join(directory, name), doomed)
    crash_if(fault, "during_retention")
    shutil.rmtree(doomed)


def install(directory, tmp, name):
    """Rename the sealed `tmp` to directory/name (one atomic step) and make it durable."""
    if os.path.exists(os.path.join(directory, name)):
        if read_pointer(directory)[0] == name:  # never replace what a resume would use
            raise CheckpointError(
                f"{name} already exists and is the latest checkpoint; "
                "restore() before saving over it"
            )
        # An earlier run's ckpt-X we did not resume from (damaged, or past a restore(step)
        # to an older one): this run's state replaces it.
        remove_dir(directory, name)
    os.rename(tmp, os.path.join(directory, name))
    durable.fsync(directory)


def remove_leftovers(directory):
    """Remove .tmp-* entries (interrupted saves and deletions); returns problems as lines."""
    problems = []
    for name in sorted(n for n in os.listdir(directory) if n.startswith(TMP_PREFIX)):
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as exc:
            problems.append(f"could not remove leftover {path}: {describe(exc)}")
    return problems


def find_latest(directory, check, warn):
    """(name, manifest) of the checkpoint to resume from, or None if nothing was ever saved.

    The pointer's target first, then ckpt-* newest step first; `check(name)` returns the
    manifest or raises Damaged (skipped, `warn`ed) or CheckpointError (propagates).
    """
    found = list_checkpoints(directory)
    pointer, problem = read_pointer(directory)
    if not found and pointer is None and problem is None:
        return None
    if problem:
        warn(f"checkpoint pointer in {directory}: {problem}; using the newest valid one")
    order = [pointer] if pointer else []
    order += [found[s] for s in sorted(found, reverse=True) if found[s] != pointer]
    damaged = [problem] if problem else []
    for name in order:
        try:
            return name, check(name)
        except Damaged as exc:
            damaged.append(f"{name}: {exc}")
            warn(
                f"checkpoint {os.path.join(directory, name)} is damaged ({exc}); "
                "falling back to an older one"
            )
    raise CheckpointError(
        f"no valid checkpoint in {directory} ({'; '.join(damaged)}); "
        "refusing to start from scratch: move it away to start over"
    )
