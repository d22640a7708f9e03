"""The TensorFlow side of a checkpoint: the host snapshot of the variables (make_reader),
writing it as tf.train.Checkpoint files (make_writer, in the writer thread), and reading
the tensors back with their CRC32C checks (read_state, check_tensors).

The invariants these serve (a snapshot before save() returns, only the chief writes) are
stated once, in train.checkpoint.manager.
"""

import logging
import os

import tensorflow as tf

from train.checkpoint.files import Damaged, describe
from train.errors import CheckpointError

log = logging.getLogger(__name__)
_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def make_reader(variables):
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


def make_writer(specs):
    """A function (prefix, host values) writing the values as tf.train.Checkpoint files.

    One eager SaveV2 in the calling (writer) thread, with the checkpoint keys and object
    graph of tf.train.Checkpoint(**{group: [variables]}) worked out once: no variable
    copies, no temporary shard and merge, no object graph rebuilt per save. About 2 ms
    of CPU for the seed CNN + Adam, all of it in the writer thread, where its priority
    applies (train.checkpoint.background); a compiled tf.train.Checkpoint.write cost
    3-4 ms, partly on TensorFlow's own threads.
    """
    keys, graph = _checkpoint_layout(specs)
    with tf.device("/cpu:0"):
        names = tf.constant(keys + [_OBJECT_GRAPH_KEY])
        slices = tf.constant([""] * (len(keys) + 1))
        graph = tf.constant(graph)

    def write(prefix, values):
        with tf.device("/cpu:0"):
            tf.raw_ops.SaveV2(
                prefix=prefix, tensor_names=names, shape_and_slices=slices, tensors=[*values, graph]
            )

    return write


def _checkpoint_layout(specs):
    """([checkpoint key of each variable, in state order], serialized object graph) of
    tf.train.Checkpoint(**{group: [variables]}), from one write of scalar stand-ins to
    TensorFlow's in-memory filesystem: keys and graph depend on names, not shapes.

    Made in the writer thread: a strategy scope is per thread, so the stand-ins are plain
    variables even if the manager lives inside strategy.scope().
    """
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    serialized = _stand_in_object_graph(specs)
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
        raise CheckpointError(
            "unexpected tf.train.Checkpoint layout: "
            f"{len(keys)} variable keys for the state's variables"
        )
    return keys, serialized


def _stand_in_object_graph(specs):
    """The serialized object graph of a checkpoint of scalar stand-ins for `specs`."""
    with tf.device("/cpu:0"):
        stand_ins = {
            g: [tf.Variable(tf.zeros([], dtype), trainable=False) for _shape, dtype in group_specs]
            for g, group_specs in specs.items()
        }
    scratch = f"ram://tf-harness-layout-{os.getpid()}-{id(stand_ins)}"
    try:
        tf.train.Checkpoint(**stand_ins).write(f"{scratch}/state")
        return tf.raw_ops.RestoreV2(
            prefix=f"{scratch}/state",
            tensor_names=[_OBJECT_GRAPH_KEY],
            shape_and_slices=[""],
            dtypes=[tf.string],
        )[0].numpy()
    finally:
        tf.io.gfile.rmtree(scratch)


def read_state(into, prefix):
    """Restore `into` from prefix; Damaged if a tensor fails its CRC32C (or does not read)."""
    try:
        into.read(prefix).assert_consumed()
    except tf.errors.OpError as exc:
        raise _unreadable(exc) from None
    except (AssertionError, ValueError) as exc:  # check_fit passed: a mismatch it missed
        raise CheckpointError(
            f"checkpoint {os.path.dirname(prefix)} could not be restored: {describe(exc)[:300]}"
        ) from exc


def check_tensors(prefix):
    """Damaged unless every tensor of the checkpoint reads back; TensorFlow checks each
    one's CRC32C from the index as it reads (a DataLoss error otherwise)."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except (tf.errors.OpError, ValueError) as exc:
        raise _unreadable(exc) from None


def _unreadable(exc):
    """The Damaged of a data shard whose tensors failed to read (a CRC32C mismatch)."""
    return Damaged(f"its tensors do not read back: {describe(exc)[:200]}")
