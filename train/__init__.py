"""tf-harness: a distributed training harness for TensorFlow."""

import os
import sys
import tempfile

# TensorFlow's C++ INFO lines (oneDNN, CPU features) drown the training log; users can
# still ask for them by setting TF_CPP_MIN_LOG_LEVEL=0 themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow_quietly():
    """Import TensorFlow with the C++ start-up banner held back.

    TF 2.21 logs oneDNN/absl lines from C++ at import, before TF_CPP_MIN_LOG_LEVEL is
    read; they would break the one-line error contract. They are replayed if the import
    fails, or if the user asked for C++ INFO logs.
    """
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
