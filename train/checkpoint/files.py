"""The directory side of train.checkpoint.manager (no TensorFlow here): names, durable writes,
manifests, verification, the choice of what to restore and what to delete.

The invariants these functions serve are stated once, in train/checkpoint.py.
"""

import hashlib
import json
import os
import re
import shutil

from train import durable
from train.errors import CheckpointError, UsageError

FORMAT_VERSION = 2  # 2: data shards checked by TensorFlow's CRCs, not sha256 (1 still reads)
MANIFEST = "manifest.json"
POINTER = "latest"
STATE_PREFIX = "state"  # tf.train.Checkpoint writes state.index + state.data-*
TMP_PREFIX = ".tmp-"
FAULT_ENV = "HARNESS_CHECKPOINT_FAULT"
FAULT_EXIT_CODE = 86
FAULT_PHASES = ("before_data", "after_data", "before_rename", "before_pointer",
                "after_pointer", "during_retention")
TENSOR_CRC = "tensor_crc32c"  # a file's "check": every tensor's CRC32C in the (hashed) index
_DATA_SHARD = re.compile(re.escape(STATE_PREFIX) + r"\.data-\d+-of-\d+")
_NAME = re.compile(r"ckpt-(\d{8,})")
_CHUNK = 1 << 20
_WRAPPED_OP = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


class Damaged(Exception):
    """A checkpoint that cannot be trusted; the message says why (one line)."""


def ckpt_name(step):
    return f"ckpt-{step:08d}"


def parse_step(name):
    """Step of a `ckpt-XXXXXXXX` name, or None for any other name."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def fault_phase():
    """The test fault phase from the environment (None normally); a typo is a usage error."""
    phase = os.environ.get(FAULT_ENV) or None
    if phase is not None and phase not in FAULT_PHASES:
        raise UsageError(f"{FAULT_ENV}={phase!r} is not a phase; choose one of: "
                         f"{', '.join(FAULT_PHASES)}")
    return phase


def crash_if(wanted, phase):
    # os._exit, not an exception: a real crash runs no finally blocks and no cleanup.
    if wanted == phase:
        os._exit(FAULT_EXIT_CODE)


def describe(exc):
    """One line for an exception: 'No space left on device (/path)' rather than a repr."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    message = _WRAPPED_OP.sub("", message)  # the op's internal name says nothing to users
    return " ".join(message.split())


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
        raise CheckpointError(f"cannot read checkpoint directory {directory}: "
                              f"{describe(exc)}") from None
    return {parse_step(n): n for n in names
            if parse_step(n) is not None and os.path.isdir(os.path.join(directory, n))}


def load_manifest(path, step):
    """The parsed manifest of the checkpoint directory `path` for `step`, or Damaged."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise Damaged(f"{MANIFEST} is missing") from None
    except (OSError, ValueError) as exc:
        raise Damaged(f"{MANIFEST} is unreadable: {describe(exc)}") from None
    kinds = {"format_version": int, "step": int, "time": (int, float), "files": dict,
             "meta": dict, "variables": dict}
    if not isinstance(manifest, dict):
        raise Damaged(f"{MANIFEST} is not a JSON object")
    version = manifest.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        # Not damage: falling back over it would silently lose progress.
        raise CheckpointError(f"checkpoint {path} has format version {version}; this "
                              f"tf-harness reads up to {FORMAT_VERSION}: upgrade it")
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


def remove_dir(directory, name, *, fault=None):
    """Delete directory/name so that a crash midway never leaves a half-deleted ckpt-* dir.

    The rename to a .tmp- name is atomic; whatever rmtree leaves behind after a crash is a
    leftover that the next chief start removes.
    """
    doomed = os.path.join(directory, f"{TMP_PREFIX}deleting-{name}-{os.getpid()}")
    os.rename(os.path.join(directory, name), doomed)
    crash_if(fault, "during_retention")
    shutil.rmtree(doomed)


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


def install(directory, tmp, name):
    """Rename the sealed `tmp` to directory/name (one atomic step) and make it durable."""
    if os.path.exists(os.path.join(directory, name)):
        if read_pointer(directory)[0] == name:  # never replace what a resume would use
            raise CheckpointError(f"{name} already exists and is the latest checkpoint; "
                                  "restore() before saving over it")
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


def check_fit(name, saved, specs, names):
    """CheckpointError unless manifest variables `saved` match `specs` {group: [(shape,
    dtype)]} exactly; `names` {group: [variable name]} only make the message readable."""
    unfit = f"checkpoint {name} does not fit this model"
    if sorted(saved) != sorted(specs):
        raise CheckpointError(f"{unfit}: it holds state groups {sorted(saved)}, "
                              f"this run has {sorted(specs)}")
    for group, ours in specs.items():
        if len(saved[group]) != len(ours):
            raise CheckpointError(f"{unfit}: {group!r} has {len(ours)} variables, "
                                  f"checkpoint has {len(saved[group])}")
        for i, ((shape, dtype), theirs) in enumerate(zip(ours, saved[group])):
            what = f"variable {group}[{i}] ({names[group][i]})"
            if list(shape) != theirs[0]:
                raise CheckpointError(f"{unfit}: {what} has shape {tuple(shape)}, "
                                      f"checkpoint has {tuple(theirs[0])}")
            if dtype != theirs[1]:
                raise CheckpointError(f"{unfit}: {what} has dtype {dtype}, "
                                      f"checkpoint has {theirs[1]}")


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
            warn(f"checkpoint {os.path.join(directory, name)} is damaged ({exc}); "
                 "falling back to an older one")
    raise CheckpointError(f"no valid checkpoint in {directory} ({'; '.join(damaged)}); "
                          "refusing to start from scratch: move it away to start over")


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


def apply_retention(directory, *, keep, current, fault, warn, cache=None):
    for name in doomed(read_manifests(directory, cache), keep=keep, current=current):
        try:
            remove_dir(directory, name, fault=fault)
        except OSError as exc:  # the save itself succeeded: warn, do not fail training
            warn(f"could not delete old checkpoint {os.path.join(directory, name)}: "
                 f"{describe(exc)}")


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
