"""Decoded splits kept on local disk, so that a restart does not decode every image again.

TFDS stores CIFAR-style images PNG-encoded; decoding a split of 20k of them takes about a
second, most of what a resume spends after the imports. The decoded arrays (uint8 images,
int32 labels) are kept as one .npz per split in $HARNESS_CACHE_DIR (default
${XDG_CACHE_HOME:-~/.cache}/tf-harness/splits; "none" turns the cache off), named by a
fingerprint of the prepared dataset's files (path, size, mtime): a rebuilt or changed
dataset is decoded afresh, never served stale.

Invariants: a cache file is complete or absent (written under a temporary name, then
renamed); a cache that cannot be read or written costs only the decode, never the run.
"""

import hashlib
import json
import logging
import os
import tempfile
import zipfile

import numpy as np

log = logging.getLogger(__name__)
CACHE_ENV = "HARNESS_CACHE_DIR"


def cache_dir():
    """The cache directory, or None when $HARNESS_CACHE_DIR is "none"."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return None if configured.lower() == "none" else os.path.expanduser(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "tf-harness", "splits")


def fingerprint(dataset_dir, split):
    """Names the cache file: changes whenever any file of the prepared dataset does."""
    entries = sorted((e.name, st.st_size, st.st_mtime_ns)
                     for e in os.scandir(dataset_dir) if e.is_file() for st in [e.stat()])
    text = json.dumps([os.path.abspath(dataset_dir), split, entries])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def load(name, dataset_dir, split, decode):
    """(images, labels) numpy arrays of a split: from the cache, else decode() and keep."""
    directory = cache_dir()
    if directory is None:
        return decode()
    safe_name = name.replace("/", "_").replace(":", "_")
    path = os.path.join(directory, f"{safe_name}-{split}-{fingerprint(dataset_dir, split)}.npz")
    try:
        with np.load(path, allow_pickle=False) as cached:
            return cached["images"], cached["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent or unreadable (torn, foreign): decode
    images, labels = decode()
    _store(path, images, labels)
    return images, labels


def _store(path, images, labels):
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=os.path.dirname(path))
    except OSError as exc:
        log.debug("split cache not written (%s)", exc)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, images=images, labels=labels)
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("split cache not written (%s)", exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass
