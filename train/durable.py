"""Durable writes: the one place that makes a file or a directory appear atomically and
survive a crash or a power cut.

Invariant: a final name only ever holds a complete artifact. Everything is written under a
hidden temporary name in the same directory (`.tmp-<pid>-<random>-<name>`), fsynced, then
renamed over the final name (a file with os.replace; a directory by renaming the old one
away as `.old-<pid>-<random>-<name>`, renaming the new one in, then deleting the old one),
and the directory is fsynced so that the rename itself is durable. Leftovers of a killed
writer are cleaned by remove_stale_temporaries, by pid.

Checkpoints (train.checkpoint.files) build their directory layout on fsync; exports
(train.export.write) and the run config (train.run) use write_file / write_dir.
"""

import contextlib
import errno
import json
import os
import shutil
import uuid

_TMP = ".tmp-"
_OLD = ".old-"


def write_text(directory, name, text):
    """Atomically and durably replace directory/name with text; its path."""

    def write(path):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    return write_file(directory, name, write)


def write_json(directory, name, obj):
    return write_text(directory, name, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _temporary_name(directory, name):
    # Keep the final name as the suffix: Keras insists on ".keras" / ".weights.h5".
    return os.path.join(directory, f"{_TMP}{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")


def write_file(directory, name, write):
    """write(tmp_path), fsync, then rename over directory/name."""
    return _write_then_commit(directory, name, write, fsync, _commit_file)


def write_dir(directory, name, write):
    """write(tmp_dir), fsync its files, then swap it in for directory/name."""
    return _write_then_commit(directory, name, write, fsync_tree, _commit_dir)


def _write_then_commit(directory, name, write, sync, commit):
    final = os.path.join(directory, name)
    tmp = _temporary_name(directory, name)
    try:
        write(tmp)
        sync(tmp)
        commit(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    fsync(directory)
    return final


def _commit_file(tmp, final):
    os.replace(tmp, final)


def _commit_dir(tmp, final):
    """Rename the old directory away, the new one in, then delete the old one.

    A crash between the two renames leaves no directory under the final name (the old
    one survives under its .old- name); never a half-written one.
    """
    old = None
    if os.path.lexists(final):
        old = os.path.join(
            os.path.dirname(final),
            f"{_OLD}{os.getpid()}-{uuid.uuid4().hex[:8]}-{os.path.basename(final)}",
        )
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        _remove(old)


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_stale_temporaries(directory):
    """Leftovers of an export killed mid-way (its process is gone): a temporary is deleted;
    an old directory renamed away is put back if nothing replaced it, else deleted."""
    for entry in sorted(os.listdir(directory)):
        if not entry.startswith((_TMP, _OLD)):
            continue
        parts = entry.split("-", 3)  # .tmp / .old, pid, random, final name
        try:
            pid = int(parts[1])
            name = parts[3]
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        path, final = os.path.join(directory, entry), os.path.join(directory, name)
        if entry.startswith(_OLD) and not os.path.lexists(final):
            os.rename(path, final)
        else:
            _remove(path)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync(path):
    """fsync a file or a directory. A file's failure raises (its bytes may not be on disk);
    a directory's is ignored only where the filesystem does not support it at all."""
    is_dir = os.path.isdir(path)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if is_dir else 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (is_dir and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def fsync_tree(root):
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for filename in filenames:
            fsync(os.path.join(dirpath, filename))
        fsync(dirpath)
