"""Training checkpoints: atomic, chief-only, verified on restore, retained, optionally async.

The public API is CheckpointManager and CheckpointOptions (train.checkpoint.manager, whose
docstring states the invariants: who writes, the layout, what is atomic, what restore
trusts, what retention keeps). The other modules serve it:

  manager     CheckpointOptions, CheckpointManager: save / wait / close, restore,
              latest_step / all_steps / meta_of / path_of; the save sequence
  state       the state {group: [variables]}, a step and `meta`, validated
  tensors     TensorFlow side: host snapshot, SaveV2 write, reading tensors back (CRC32C)
  background  the writer thread (idle priority, one write in flight at most)
  files       the directory: names, the `latest` pointer, listing, install, deletion,
              leftovers, the choice of what to restore (no TensorFlow)
  manifest    format version, manifest write / seal / load, check_files, check_fit, the
              tensor-CRC rule for data shards, reading every manifest (no TensorFlow)
  retention   which checkpoints a save deletes (no TensorFlow)
  faults      HARNESS_CHECKPOINT_FAULT: crash a save at a phase, for tests
"""

from train.checkpoint.manager import CheckpointManager, CheckpointOptions

__all__ = ["CheckpointManager", "CheckpointOptions"]
