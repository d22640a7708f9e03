"""Manifests (no TensorFlow here): the format version, writing and sealing manifest.json,
loading and checking it, the files' sizes and hashes, the tensor-CRC rule for data shards,
and whether a checkpoint fits the state.

What a manifest holds, and when a checkpoint counts as intact, is stated once, in
train.checkpoint.manager.
"""

import hashlib
import json
import os
import re

from train import durable
from train.checkpoint.files import STATE_PREFIX, Damaged, describe, list_checkpoints
from train.errors import CheckpointError

FORMAT_VERSION = 2  # 2: data shards checked by TensorFlow's CRCs, not sha256 (1 still reads)
MANIFEST = "manifest.json"
TENSOR_CRC = "tensor_crc32c"  # a file's "check": every tensor's CRC32C in the (hashed) index
_DATA_SHARD = re.compile(re.escape(STATE_PREFIX) + r"\.data-\d+-of-\d+")
_CHUNK = 1 << 20


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path):
    """A file's manifest entry: {size, sha256}, or {size, check: TENSOR_CRC} for a data
    shard. TensorFlow stores a CRC32C of every tensor in the index, and checks it on every
    read, so hashing the index covers the data: no second pass over the big file."""
    record = {"size": os.path.getsize(path)}
    if _DATA_SHARD.fullmatch(os.path.basename(path)):
        record["check"] = TENSOR_CRC
    else:
        record["sha256"] = file_sha256(path)
    return record


def needs_tensor_check(manifest):
    """True if some file of this checkpoint is checked by reading its tensors (TENSOR_CRC)."""
    return any(f.get("check") == TENSOR_CRC for f in manifest["files"].values())


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def write_manifest(path, manifest):
    """Write (not yet fsync) a manifest. It carries its own checksum, so that a damaged
    manifest (say, one digit of a shape flipped) reads as damage to fall back over, not as
    a model that does not fit."""
    body = dict(manifest, checksum=hashlib.sha256(_canonical(manifest)).hexdigest())
    with open(path, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1, sort_keys=True)


def seal_checkpoint(tmp, manifest, *, sync_too=()):
    """Seal a filled tmp dir: write manifest.json with its files' records (file_record),
    then fsync those files, the manifest, the files `sync_too` and the directory. After this
    it may be renamed into place. All writes come before the first fsync: on a journaling
    filesystem that one commit carries them all, and the other fsyncs find nothing to do
    (one journal commit instead of three, each of which takes CPU from training)."""
    names = sorted(os.listdir(tmp))
    files = {n: file_record(os.path.join(tmp, n)) for n in names}
    write_manifest(os.path.join(tmp, MANIFEST), dict(manifest, files=files))
    for path in [*(os.path.join(tmp, n) for n in [*names, MANIFEST]), *sync_too]:
        durable.fsync(path)
    durable.fsync(tmp)


def load_manifest(path, step):
    """The parsed manifest of the checkpoint directory `path` for `step`, or Damaged."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise Damaged(f"{MANIFEST} is missing") from None
    except (OSError, ValueError) as exc:
        raise Damaged(f"{MANIFEST} is unreadable: {describe(exc)}") from None
    kinds = {
        "format_version": int,
        "step": int,
        "time": (int, float),
        "files": dict,
        "meta": dict,
        "variables": dict,
    }
    if not isinstance(manifest, dict):
        raise Damaged(f"{MANIFEST} is not a JSON object")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        # Not damage: falling back over it would silently lose progress.
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this "
            f"tf-harness reads up to {FORMAT_VERSION}: upgrade it"
        )
    checksum = manifest.pop("checksum", None)
    if checksum != hashlib.sha256(_canonical(manifest)).hexdigest():
        raise Damaged(f"{MANIFEST} does not match its checksum")
    for key, kind in kinds.items():
        if not isinstance(manifest.get(key), kind):
            raise Damaged(f"{MANIFEST} lacks a valid {key!r}")
    if manifest["step"] != step:
        raise Damaged(f"{MANIFEST} says step {manifest['step']}, the directory says {step}")
    if f"{STATE_PREFIX}.index" not in manifest["files"]:
        raise Damaged(f"{MANIFEST} lists no {STATE_PREFIX}.index")
    return manifest


def check_files(path, manifest, *, hashes):
    """Damaged unless every listed file exists with its size (and sha256 if `hashes`)."""
    for name, want in sorted(manifest["files"].items()):
        file_path = os.path.join(path, name)
        try:
            size = os.path.getsize(file_path)
        except OSError:
            raise Damaged(f"{name} is missing") from None
        if size != want.get("size"):
            raise Damaged(f"{name} has {size} bytes, the manifest says {want.get('size')}")
        if hashes:
            if want.get("check") == TENSOR_CRC:
                continue  # the caller reads the tensors (needs_tensor_check)
            try:
                got = file_sha256(file_path)
            except OSError as exc:
                raise Damaged(f"{name} is unreadable: {describe(exc)}") from None
            if got != want.get("sha256"):
                raise Damaged(f"{name} does not match its sha256 (corrupted)")


def check_fit(name, saved, specs, names):
    """CheckpointError unless manifest variables `saved` match `specs` {group: [(shape,
    dtype)]} exactly; `names` {group: [variable name]} only make the message readable."""
    unfit = f"checkpoint {name} does not fit this model"
    if sorted(saved) != sorted(specs):
        raise CheckpointError(
            f"{unfit}: it holds state groups {sorted(saved)}, this run has {sorted(specs)}"
        )
    for group, ours in specs.items():
        if len(saved[group]) != len(ours):
            raise CheckpointError(
                f"{unfit}: {group!r} has {len(ours)} variables, checkpoint has {len(saved[group])}"
            )
        for i, ((shape, dtype), theirs) in enumerate(zip(ours, saved[group], strict=True)):
            what = f"variable {group}[{i}] ({names[group][i]})"
            if list(shape) != theirs[0]:
                raise CheckpointError(
                    f"{unfit}: {what} has shape {tuple(shape)}, checkpoint has {tuple(theirs[0])}"
                )
            if dtype != theirs[1]:
                raise CheckpointError(
                    f"{unfit}: {what} has dtype {dtype}, checkpoint has {theirs[1]}"
                )


def read_manifests(directory, cache=None):
    """{name: manifest, or None if damaged}; checkpoints of a newer format are left out,
    so that retention never deletes what it cannot read.

    `cache` ({name: manifest or None}, kept by the caller) saves reading a manifest again:
    an installed checkpoint never changes, except when install() replaces it, and the
    caller then drops that name from the cache.
    """
    found = {}
    for step, name in list_checkpoints(directory).items():
        if cache is not None and name in cache:
            found[name] = cache[name]
            continue
        try:
            found[name] = load_manifest(os.path.join(directory, name), step)
        except Damaged:
            found[name] = None
        except CheckpointError:
            continue
    if cache is not None:
        cache.clear()
        cache.update(found)
    return found


def intact_steps(directory):
    """Ascending steps whose manifest is intact and files have their sizes (no hashing)."""
    steps = []
    for step, name in list_checkpoints(directory).items():
        path = os.path.join(directory, name)
        try:
            check_files(path, load_manifest(path, step), hashes=False)
        except (Damaged, CheckpointError):
            continue
        steps.append(step)
    return sorted(steps)
