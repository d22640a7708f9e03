"""Checkpoints: every checkpoint file of a run is written, checked and deleted here.

Invariants (stated once; the helpers in train.checkpoint.files serve them):

Who writes. Only the chief creates, changes or deletes anything in DIR (the run's
  workdir/checkpoints), including the leftover cleanup at start and the first mkdir.
  Every worker takes the same snapshot in save(), because reading a SyncOnRead variable
  under MultiWorkerMirroredStrategy is a collective. The write itself reads only that
  host copy, never a real variable, so it involves no collective: a non-chief therefore
  writes nothing at all (not even to a temporary directory) and never needs the disk.
Layout.
  DIR/ckpt-00000100/state.index, state.data-00000-of-00001   tf.train.Checkpoint files
  DIR/ckpt-00000100/manifest.json   format_version, step, time, keep_forever,
      files {name: {size, sha256} or, for the data shard, {size, check:
      "tensor_crc32c"}}, meta (the caller's), variables {group: [[shape, dtype], ...]},
      and a checksum of all that
  DIR/latest     "ckpt-00000100\\n": the checkpoint to resume from
  DIR/.tmp-*     an interrupted save or delete; the chief removes these at start
  The state files restore straight into the real variables with
  tf.train.Checkpoint(**{group: [variables]}).read(DIR/ckpt-X/state).
Atomic. save() copies every variable to host memory before it returns (the snapshot);
  training may go on while one background thread (one write in flight at most) builds
  the checkpoint in DIR/.tmp-* and the new pointer in DIR/.tmp-latest-*, fsyncs every
  file, the manifest, that pointer and the directory, renames it to ckpt-X, fsyncs DIR,
  and only then replaces `latest` (os.replace, fsync DIR). Deletion renames to
  .tmp-deleting-* before rmtree. A crash at any point leaves the previous checkpoint
  complete and `latest` naming a complete one.
Verified. restore() trusts a checkpoint only if its manifest is intact and names the
  step of its directory, every file has its size and sha256, and every tensor of the
  data shard reads back with the CRC32C its (hashed) index gives. It tries the one
  `latest` names, then ckpt-* newest step first; a damaged one is logged and skipped.
  If checkpoints exist but none is intact, or one does not fit the given state, that
  is a CheckpointError: never a silent fresh start, never a fallback over another model.
Retention. After each save the chief keeps the `keep` newest (by save time), the one
  `latest` names, and every checkpoint whose manifest says keep_forever (decided at
  save: keep_every_hours passed since the previous such one; so it survives restarts).
Fault hook (tests). HARNESS_CHECKPOINT_FAULT=<phase> makes a save os._exit(86) at that
  phase (checkpoint_files.FAULT_PHASES), as a crash there would.
"""

import collections
import concurrent.futures
import dataclasses
import json
import logging
import operator
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping

import tensorflow as tf

from train.checkpoint import files as cf
from train import durable
from train.errors import CheckpointError, CheckpointWriteError, HarnessError, UsageError

log = logging.getLogger(__name__)
_GROUP = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_UNKNOWN = object()


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """keep: newest checkpoints kept. keep_every_hours: additionally keep one checkpoint
    per this many hours forever. async_save: save() returns after the snapshot."""

    keep: int = 3
    keep_every_hours: float | None = None
    async_save: bool = False

    def __post_init__(self):
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise UsageError(f"checkpoint keep must be an integer >= 1, got {self.keep!r}")
        hours = self.keep_every_hours
        if hours is not None and (isinstance(hours, bool) or not isinstance(hours, (int, float))
                                  or not hours > 0):
            raise UsageError(f"checkpoint keep_every_hours must be > 0 or None, got {hours!r}")


_Job = collections.namedtuple("_Job", "step time values fault")  # values: host tensors


class CheckpointManager:
    """Saves and restores `state` ({group: [variables]}) in `directory`; see module doc.

    `state` must hold existing variables, each once, e.g. {"model": model.variables,
    "optimizer": optimizer.variables (built), "train": [step]}. Use model.variables, not
    model.weights: weights leaves out the Dropout SeedGenerator state. Call close() (or
    wait()) before reporting a save as done, e.g. before exiting 42 after preemption.
    """

    def __init__(self, *, directory, state, is_chief, meta=None,
                 options=CheckpointOptions(), clock=time.time):
        self.directory = os.path.abspath(os.fspath(directory))
        self.is_chief = bool(is_chief)
        self.options = options
        self._clock = clock  # wall clock for manifests and keep_every_hours; tests fake it
        self._meta = _json_copy(meta or {})
        self._groups, self._specs, self._names = _describe_state(state)
        self._read_all = _make_reader([v for vs in self._groups.values() for v in vs])
        self._last_step = None  # restored or saved by us: saving it again is a no-op
        self._inflight = None  # Future of the write not yet collected
        self._executor = None
        self._writer = None  # _make_writer's function, made in the writer thread
        self._last_forever = _UNKNOWN  # time of the newest keep_forever checkpoint
        self._manifests = {}  # retention's cache (checkpoint_files.read_manifests)
        if self.is_chief:
            self._prepare_directory()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def save(self, step):
        """Snapshot now and write (in the background if async_save); same step: no-op."""
        step = _as_step(step)
        self.wait()  # one write in flight at most; a failed one is raised here
        if step == self._last_step:
            return
        job = _Job(step=step, time=self._clock(), values=self._read_all(),
                   fault=cf.fault_phase())
        self._last_step = step
        if not self.is_chief:
            return
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="checkpoint-writer",
                initializer=_run_at_idle_priority)
        self._inflight = self._executor.submit(self._write, job)
        if not self.options.async_save:
            self.wait()

    def wait(self):
        """Block until the write in flight is done; raise CheckpointWriteError if it failed."""
        future, self._inflight = self._inflight, None
        if future is None:
            return
        try:
            future.result()
        except HarnessError:
            self._last_step = None  # let the caller retry the same step
            raise

    def close(self):
        """Wait for the write in flight (raising its failure) and stop the writer thread."""
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    def _write(self, job):
        """One rule for a failed save, sync or async alike: a HarnessError keeps its class
        (and so its exit code: a save that cannot be right, e.g. over the latest
        checkpoint without a restore, is exit 2); anything else (disk full, permissions)
        becomes CheckpointWriteError, exit 1."""
        try:
            self._write_checkpoint(job)
        except HarnessError as exc:
            raise type(exc)(f"checkpoint save at step {job.step} failed: {exc}") from exc
        except Exception as exc:
            raise CheckpointWriteError(
                f"checkpoint save at step {job.step} failed: {cf.describe(exc)}") from exc

    def _write_checkpoint(self, job):
        name = cf.ckpt_name(job.step)
        keep_forever = self._keep_forever(job.time)
        tmp = tempfile.mkdtemp(prefix=f"{cf.TMP_PREFIX}{name}-", dir=self.directory)
        pointer = None
        try:
            cf.crash_if(job.fault, "before_data")
            self._write_state(os.path.join(tmp, cf.STATE_PREFIX), job.values)
            cf.crash_if(job.fault, "after_data")
            # The new pointer is written now and fsynced with the checkpoint's files (one
            # journal commit); it replaces `latest` only after the rename below is durable.
            pointer = cf.stage_text(self.directory, cf.POINTER, name + "\n")
            cf.seal_checkpoint(tmp, {
                "format_version": cf.FORMAT_VERSION, "step": job.step, "time": job.time,
                "keep_forever": keep_forever, "meta": self._meta, "variables": {
                    g: [[list(shape), dtype] for shape, dtype in specs]
                    for g, specs in self._specs.items()}}, sync_too=[pointer])
            cf.crash_if(job.fault, "before_rename")
            self._manifests.pop(name, None)  # install may replace an older run's ckpt-X
            cf.install(self.directory, tmp, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if pointer is not None and os.path.exists(pointer):
                os.unlink(pointer)
            raise
        if keep_forever:
            self._last_forever = job.time
        cf.crash_if(job.fault, "before_pointer")
        cf.commit_text(self.directory, pointer, cf.POINTER)
        cf.crash_if(job.fault, "after_pointer")
        cf.apply_retention(self.directory, keep=self.options.keep, current=name,
                           fault=job.fault, warn=log.warning, cache=self._manifests)

    def _write_state(self, prefix, values):
        if self._writer is None:
            self._writer = _make_writer(self._specs)
        self._writer(prefix, values)

    def _keep_forever(self, now):
        """Keep this save forever? Yes if keep_every_hours passed since the last kept one."""
        hours = self.options.keep_every_hours
        if hours is None:
            return False
        if self._last_forever is _UNKNOWN:  # first save of this process: ask the disk
            kept = cf.kept_forever(cf.read_manifests(self.directory))
            self._last_forever = max(kept.values(), default=None)
        return self._last_forever is None or now - self._last_forever >= hours * 3600

    def restore(self, step=None):
        """Restore `step` (default: the latest valid); the restored step, or None if DIR
        holds no checkpoint at all. Damaged or unfit checkpoints: see the module doc.
        After a CheckpointError the variables may hold a part of a damaged checkpoint."""
        self._settle()
        # The restore itself checks every tensor's CRC32C as it reads (one read, not a
        # check and then a restore): a damaged tensor may leave a part of its values in
        # the variables, and the fallback then overwrites all of them (assert_consumed).
        into = tf.train.Checkpoint(**{g: list(vs) for g, vs in self._groups.items()})
        if step is None:
            found = cf.find_latest(self.directory, lambda n: self._check(n, into), log.warning)
            if found is None:
                return None
        else:
            found = self._explicit(_as_step(step), into)
        name, manifest = found
        if step is None and self.is_chief and cf.read_pointer(self.directory)[0] != name:
            # Fell back past a damaged one: `latest` names what a resume uses, so that a
            # save at the damaged one's step replaces it (checkpoint_files.install).
            durable.write_text(self.directory, cf.POINTER, name + "\n")
        self._last_step = manifest["step"]
        return manifest["step"]

    def latest_step(self):
        """The step restore() would restore (fully verified), or None if there is none."""
        self._settle()
        found = cf.find_latest(self.directory, self._check, log.warning)
        return None if found is None else found[1]["step"]

    def all_steps(self):
        """Ascending steps whose manifest is intact and files have their sizes (no hashing)."""
        self._settle()
        return cf.intact_steps(self.directory)

    def meta_of(self, step):
        """The `meta` dict saved with `step`, e.g. to refuse a workdir of another model."""
        step = _as_step(step)
        try:
            return cf.load_manifest(self.path_of(step), step)["meta"]
        except cf.Damaged as exc:
            raise CheckpointError(f"checkpoint {self.path_of(step)}: {exc}") from None

    def path_of(self, step):
        """Where the checkpoint of `step` is (or would be)."""
        return os.path.join(self.directory, cf.ckpt_name(_as_step(step)))

    def _settle(self):
        # Let an in-flight write finish so readers see no half-done retention; its failure
        # stays pending for save()/wait()/close().
        if self._inflight is not None:
            concurrent.futures.wait([self._inflight])

    def _explicit(self, step, into):
        if not os.path.isdir(self.path_of(step)):
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory} "
                                  f"(steps there: {self.all_steps() or 'none'})")
        try:
            return cf.ckpt_name(step), self._check(cf.ckpt_name(step), into)
        except cf.Damaged as exc:
            raise CheckpointError(f"checkpoint {self.path_of(step)} is damaged: {exc}") from None

    def _check(self, name, into=None):
        """The manifest if `name` is intact and fits; Damaged, or CheckpointError if unfit.
        With `into` (a tf.train.Checkpoint of the state), its tensors are checked by
        restoring them into it."""
        path = os.path.join(self.directory, name)
        manifest = cf.load_manifest(path, cf.parse_step(name))
        cf.check_files(path, manifest, hashes=True)
        cf.check_fit(name, manifest["variables"], self._specs, self._names)
        prefix = os.path.join(path, cf.STATE_PREFIX)
        if into is not None:
            _read_state(into, prefix)
        elif cf.needs_tensor_check(manifest):
            _check_tensors(prefix)
        return manifest

    def _prepare_directory(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
            problems = cf.remove_leftovers(self.directory)
        except OSError as exc:
            raise UsageError(f"cannot use checkpoint directory {self.directory}: "
                             f"{cf.describe(exc)}") from None
        for problem in problems:
            log.warning("%s", problem)


def _check_tensors(prefix):
    """Damaged unless every tensor of the checkpoint reads back; TensorFlow checks each
    one's CRC32C from the index as it reads (a DataLoss error otherwise)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, ValueError) as exc:
        raise _unreadable(exc) from None


def _read_state(into, prefix):
    """Restore `into` from prefix; Damaged if a tensor fails its CRC32C (or does not read)."""
    try:
        into.read(prefix).assert_consumed()
    except tf.errors.OpError as exc:
        raise _unreadable(exc) from None
    except (AssertionError, ValueError) as exc:  # check_fit passed: a mismatch it missed
        raise CheckpointError(f"checkpoint {os.path.dirname(prefix)} could not be restored: "
                              f"{cf.describe(exc)[:300]}") from exc


def _unreadable(exc):
    """The Damaged of a data shard whose tensors failed to read (a CRC32C mismatch)."""
    return cf.Damaged(f"its tensors do not read back: {cf.describe(exc)[:200]}")


def _make_reader(variables):
    """A function returning host copies of `variables` (CPU tensors), as fast as possible.

    One compiled read of all variables costs one dispatch instead of one per variable:
    about 0.6 ms against 1.8 ms for the seed CNN + Adam (33 variables) here. The tensors
    are a true snapshot without another copy: an update of a variable whose buffer a read
    still holds copies that buffer first (resource variables are copy-on-write), and
    SaveV2 takes them as they are (numpy copies cost the training thread 0.3 ms more).
    """
    @tf.function(autograph=False)
    def read_all():
        with tf.device("/cpu:0"):  # copy off an accelerator inside the same call
            return [tf.identity(v) for v in variables]

    try:
        read_all.get_concrete_function()  # trace now, not inside the first save
    except (TypeError, ValueError, tf.errors.OpError):
        log.info("compiled snapshot unavailable; reading variables one by one")
        return lambda: [v.numpy() for v in variables]
    return lambda: list(read_all())


def _make_writer(specs):
    """A function (prefix, host values) writing the values as tf.train.Checkpoint files.

    One eager SaveV2 in the calling (writer) thread, with the checkpoint keys and object
    graph of tf.train.Checkpoint(**{group: [variables]}) worked out once: no variable
    copies, no temporary shard and merge, no object graph rebuilt per save. About 2 ms
    of CPU for the seed CNN + Adam, all of it in the writer thread, where its priority
    applies (_run_at_idle_priority); a compiled tf.train.Checkpoint.write cost 3-4 ms,
    partly on TensorFlow's own threads.
    """
    keys, graph = _checkpoint_layout(specs)
    with tf.device("/cpu:0"):
        names = tf.constant(keys + [_OBJECT_GRAPH_KEY])
        slices = tf.constant([""] * (len(keys) + 1))
        graph = tf.constant(graph)

    def write(prefix, values):
        with tf.device("/cpu:0"):
            tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=slices,
                              tensors=[*values, graph])
    return write


_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _checkpoint_layout(specs):
    """([checkpoint key of each variable, in state order], serialized object graph) of
    tf.train.Checkpoint(**{group: [variables]}), from one write of scalar stand-ins to
    TensorFlow's in-memory filesystem: keys and graph depend on names, not shapes.

    Made in the writer thread: a strategy scope is per thread, so the stand-ins are plain
    variables even if the manager lives inside strategy.scope().
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    with tf.device("/cpu:0"):
        stand_ins = {g: [tf.Variable(tf.zeros([], dtype), trainable=False)
                         for _shape, dtype in group_specs] for g, group_specs in specs.items()}
    scratch = f"ram://tf-harness-layout-{os.getpid()}-{id(stand_ins)}"
    try:
        tf.train.Checkpoint(**stand_ins).write(f"{scratch}/state")
        serialized = tf.raw_ops.RestoreV2(
            prefix=f"{scratch}/state", tensor_names=[_OBJECT_GRAPH_KEY],
            shape_and_slices=[""], dtypes=[tf.string])[0].numpy()
    finally:
        tf.io.gfile.rmtree(scratch)
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(serialized)

    def child(node_id, name):
        return next(c.node_id for c in graph.nodes[node_id].children if c.local_name == name)

    keys = []
    for group, group_specs in specs.items():
        group_id = child(0, group)  # node 0 is the root, the Checkpoint itself
        for i in range(len(group_specs)):
            node = graph.nodes[child(group_id, str(i))]
            keys += [a.checkpoint_key for a in node.attributes if a.name == "VARIABLE_VALUE"]
    if len(keys) != sum(len(v) for v in specs.values()):
        raise CheckpointError("unexpected tf.train.Checkpoint layout: "
                              f"{len(keys)} variable keys for the state's variables")
    return keys, serialized


def _run_at_idle_priority():
    """Writer thread initializer: schedule this thread only when a core is idle (Linux).

    An async write shares the cores with training. At normal priority, each time it runs
    it takes a core from a compute thread and holds up the whole step; at SCHED_IDLE it
    fills the gaps between ops instead (measured here: 7 ms of pure CPU at SCHED_IDLE
    cost training ~1 ms; the real write still costs ~6 ms, mostly its I/O in the kernel). Never slower than a sync save: once training blocks on the
    write (save, wait, close), the cores are idle and the write runs at full speed.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # 0: this thread
    except (AttributeError, OSError):  # not Linux: normal priority
        pass


def _describe_state(state):
    """({group: [variables]}, {group: [(shape, dtype)]}, {group: [name]}) or UsageError."""
    if not isinstance(state, Mapping) or not state:
        raise UsageError("checkpoint state must be a non-empty mapping: group -> variables")
    groups, specs, names, seen = {}, {}, {}, {}
    for group, variables in state.items():
        if not (isinstance(group, str) and _GROUP.fullmatch(group)) or \
                hasattr(tf.train.Checkpoint, group):
            raise UsageError(f"checkpoint state group {group!r}: use a name like 'model'")
        groups[group], specs[group], names[group] = list(variables), [], []
        for i, v in enumerate(groups[group]):
            where = f"{group}[{i}]"
            names[group].append(getattr(v, "path", None) or getattr(v, "name", where))
            if id(v) in seen:  # a checkpoint stores an object once: the twins would not fit
                raise UsageError(f"checkpoint state lists {names[group][-1]} twice "
                                 f"({seen[id(v)]} and {where})")
            seen[id(v)] = where
            try:
                specs[group].append((tuple(int(d) for d in v.shape),
                                     tf.as_dtype(v.dtype).name))
            except (AttributeError, TypeError, ValueError):
                raise UsageError(f"checkpoint state {where} is not a built variable: "
                                 f"{v!r:.80}") from None
    return groups, specs, names


def _as_step(step):
    try:
        if not isinstance(step, bool) and operator.index(step) >= 0:
            return operator.index(step)  # also numpy / scalar tensor integers
    except TypeError:
        pass
    raise UsageError(f"checkpoint step must be an integer >= 0, got {step!r}")


def _json_copy(meta):
    # A copy now: a later change to the caller's dict must not reach the manifests.
    try:
        return json.loads(json.dumps(meta))
    except (TypeError, ValueError) as exc:
        raise UsageError(f"checkpoint meta must be JSON-serializable: {exc}") from None
