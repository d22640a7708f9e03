"""Checkpoints: the public API (CheckpointManager: save, restore, latest) and the rules
every checkpoint file of a run follows, from its write to its deletion.

Invariants (stated once, here; the other modules of train.checkpoint serve them):

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
  phase (train.checkpoint.faults.FAULT_PHASES), as a crash there would.
"""

import collections
import logging
import os
import shutil
import tempfile
import time

import tensorflow as tf

from train import durable
from train.checkpoint import files, finite
from train.checkpoint.background import BackgroundWriter
from train.checkpoint.faults import crash_if, fault_phase
from train.checkpoint.manifest import (
    FORMAT_VERSION,
    check_files,
    check_fit,
    intact_steps,
    load_manifest,
    needs_tensor_check,
    read_manifests,
    seal_checkpoint,
)
from train.checkpoint.options import CheckpointOptions
from train.checkpoint.retention import apply_retention, kept_forever
from train.checkpoint.state import as_step, describe_state, json_copy
from train.checkpoint.tensors import check_tensors, make_reader, make_writer, read_state
from train.errors import CheckpointError, CheckpointWriteError, HarnessError, UsageError

log = logging.getLogger(__name__)
_UNKNOWN = object()
DEFAULT_OPTIONS = CheckpointOptions()  # frozen: one instance serves every manager


_Job = collections.namedtuple("_Job", "step time values fault")  # values: host tensors


class CheckpointManager:
    """Saves and restores `state` ({group: [variables]}) in `directory`; see module doc.

    `state` must hold existing variables, each once, e.g. {"model": model.variables,
    "optimizer": optimizer.variables (built), "train": [step]}. Use model.variables, not
    model.weights: weights leaves out the Dropout SeedGenerator state. Call close() (or
    wait()) before reporting a save as done, e.g. before exiting 42 after preemption.
    """

    def __init__(
        self, *, directory, state, is_chief, meta=None, options=DEFAULT_OPTIONS, clock=time.time
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        self.is_chief = bool(is_chief)
        self.options = options
        self._clock = clock  # wall clock for manifests and keep_every_hours; tests fake it
        self._meta = json_copy(meta or {})
        self._groups, self._specs, self._names = describe_state(state)
        self._read_all = make_reader([v for vs in self._groups.values() for v in vs])
        self._last_step = None  # restored or saved by us: saving it again is a no-op
        self._background = BackgroundWriter()
        self._writer = None  # make_writer's function, made in the writer thread
        self._last_forever = _UNKNOWN  # time of the newest keep_forever checkpoint
        self._manifests = {}  # retention's cache (manifest.read_manifests)
        if self.is_chief:
            self._prepare_directory()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def save(self, step):
        """Snapshot now and write (in the background if async_save); same step: no-op."""
        step = as_step(step)
        self.wait()  # one write in flight at most; a failed one is raised here
        if step == self._last_step:
            return
        job = _Job(step=step, time=self._clock(), values=self._read_all(), fault=fault_phase())
        finite.refuse_nonfinite(
            f"checkpoint save at step {step}",  # every worker alike
            finite.state_names(self._names),
            job.values,
        )
        self._last_step = step
        if not self.is_chief:
            return
        self._background.submit(self._write, job)
        if not self.options.async_save:
            self.wait()

    def wait(self):
        """Block until the write in flight is done; raise CheckpointWriteError if it failed."""
        try:
            self._background.wait()
        except HarnessError:
            self._last_step = None  # let the caller retry the same step
            raise

    def close(self):
        """Wait for the write in flight (raising its failure) and stop the writer thread."""
        try:
            self.wait()
        finally:
            self._background.close()

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
                f"checkpoint save at step {job.step} failed: {files.describe(exc)}"
            ) from exc

    def _write_checkpoint(self, job):
        name = files.ckpt_name(job.step)
        keep_forever = self._keep_forever(job.time)
        tmp = tempfile.mkdtemp(prefix=f"{files.TMP_PREFIX}{name}-", dir=self.directory)
        pointer = None
        try:
            crash_if(job.fault, "before_data")
            self._write_state(os.path.join(tmp, files.STATE_PREFIX), job.values)
            crash_if(job.fault, "after_data")
            # The new pointer is written now and fsynced with the checkpoint's files (one
            # journal commit); it replaces `latest` only after the rename below is durable.
            pointer = files.stage_text(self.directory, files.POINTER, name + "\n")
            seal_checkpoint(tmp, self._manifest(job, keep_forever), sync_too=[pointer])
            crash_if(job.fault, "before_rename")
            self._manifests.pop(name, None)  # install may replace an older run's ckpt-X
            files.install(self.directory, tmp, name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if pointer is not None and os.path.exists(pointer):
                os.unlink(pointer)
            raise
        if keep_forever:
            self._last_forever = job.time
        crash_if(job.fault, "before_pointer")
        files.commit_text(self.directory, pointer, files.POINTER)
        crash_if(job.fault, "after_pointer")
        apply_retention(
            self.directory,
            keep=self.options.keep,
            current=name,
            fault=job.fault,
            warn=log.warning,
            cache=self._manifests,
        )

    def _manifest(self, job, keep_forever):
        variables = {
            g: [[list(shape), dtype] for shape, dtype in specs] for g, specs in self._specs.items()
        }
        return {
            "format_version": FORMAT_VERSION,
            "step": job.step,
            "time": job.time,
            "keep_forever": keep_forever,
            "meta": self._meta,
            "variables": variables,
        }

    def _write_state(self, prefix, values):
        if self._writer is None:
            self._writer = make_writer(self._specs)
        self._writer(prefix, values)

    def _keep_forever(self, now):
        """Keep this save forever? Yes if keep_every_hours passed since the last kept one."""
        hours = self.options.keep_every_hours
        if hours is None:
            return False
        if self._last_forever is _UNKNOWN:  # first save of this process: ask the disk
            kept = kept_forever(read_manifests(self.directory))
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
            found = files.find_latest(self.directory, lambda n: self._check(n, into), log.warning)
            if found is None:
                return None
        else:
            found = self._explicit(as_step(step), into)
        name, manifest = found
        if step is None and self.is_chief and files.read_pointer(self.directory)[0] != name:
            # Fell back past a damaged one: `latest` names what a resume uses, so that a
            # save at the damaged one's step replaces it (files.install).
            durable.write_text(self.directory, files.POINTER, name + "\n")
        self._last_step = manifest["step"]
        return manifest["step"]

    def latest_step(self):
        """The step restore() would restore (fully verified), or None if there is none."""
        self._settle()
        found = files.find_latest(self.directory, self._check, log.warning)
        return None if found is None else found[1]["step"]

    def all_steps(self):
        """Ascending steps whose manifest is intact and files have their sizes (no hashing)."""
        self._settle()
        return intact_steps(self.directory)

    def meta_of(self, step):
        """The `meta` dict saved with `step`, e.g. to refuse a workdir of another model."""
        step = as_step(step)
        try:
            return load_manifest(self.path_of(step), step)["meta"]
        except files.Damaged as exc:
            raise CheckpointError(f"checkpoint {self.path_of(step)}: {exc}") from None

    def path_of(self, step):
        """Where the checkpoint of `step` is (or would be)."""
        return os.path.join(self.directory, files.ckpt_name(as_step(step)))

    def _settle(self):
        # Let an in-flight write finish so readers see no half-done retention; its failure
        # stays pending for save()/wait()/close().
        self._background.settle()

    def _explicit(self, step, into):
        if not os.path.isdir(self.path_of(step)):
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} "
                f"(steps there: {self.all_steps() or 'none'})"
            )
        try:
            return files.ckpt_name(step), self._check(files.ckpt_name(step), into)
        except files.Damaged as exc:
            raise CheckpointError(f"checkpoint {self.path_of(step)} is damaged: {exc}") from None

    def _check(self, name, into=None):
        """The manifest if `name` is intact and fits; Damaged, or CheckpointError if unfit.
        With `into` (a tf.train.Checkpoint of the state), its tensors are checked by
        restoring them into it."""
        path = os.path.join(self.directory, name)
        manifest = load_manifest(path, files.parse_step(name))
        check_files(path, manifest, hashes=True)
        check_fit(name, manifest["variables"], self._specs, self._names)
        prefix = os.path.join(path, files.STATE_PREFIX)
        if into is not None:
            read_state(into, prefix)
            finite.check_restored(name, finite.state_names(self._names), self._read_all())
        elif needs_tensor_check(manifest):
            check_tensors(prefix)
        return manifest

    def _prepare_directory(self):
        try:
            os.makedirs(self.directory, exist_ok=True)
            problems = files.remove_leftovers(self.directory)
        except OSError as exc:
            raise UsageError(
                f"cannot use checkpoint directory {self.directory}: {files.describe(exc)}"
            ) from None
        for problem in problems:
            log.warning("%s", problem)
