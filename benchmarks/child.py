"""Run one benchmark function in a fresh process: `python -m benchmarks.child SPEC OUT`.

Why a child: MirroredStrategy over N logical CPUs needs the CPU split before TensorFlow
initialises, which the parent (already measuring under the default strategy) cannot
undo. The child creates the backend first, then calls the function, which measures its
variants interleaved inside the child (e.g. Keras fit and the harness under the same
strategy), so each comparison still happens within one process.

SPEC is a JSON file {"target": "module:function", "strategy": ..., "replicas": ...,
"kwargs": {...}}; the function is called as target(backend=..., **kwargs) and must
return a list of JSON-able rows, written to OUT as JSON.
"""

import importlib
import json
import os
import subprocess
import sys
import tempfile


def call_in_child(target, *, strategy, replicas=None, timeout=6 * 3600, **kwargs):
    """Rows from target(backend, **kwargs) run in a child process; raises on failure."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        spec, out = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec, "w", encoding="utf-8") as f:
            json.dump({"target": target, "strategy": strategy, "replicas": replicas,
                       "kwargs": kwargs}, f)
        proc = subprocess.run([sys.executable, "-m", "benchmarks.child", spec, out],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not os.path.exists(out):
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"child exited {proc.returncode}: {tail[-600:]}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)


def main(argv):
    spec_path, out_path = argv
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    from train import import_tensorflow_quietly

    import_tensorflow_quietly()
    from train import distribute

    # First TensorFlow call of the process: the logical CPU split must come before any op.
    backend = distribute.create(spec["strategy"], replicas=spec["replicas"])
    module_name, function_name = spec["target"].split(":")
    function = getattr(importlib.import_module(module_name), function_name)
    rows = function(backend=backend, **spec["kwargs"])
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
