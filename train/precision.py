"""`--precision auto`: mixed bfloat16 where the hardware has bfloat16 matrix units.

bfloat16 keeps float32's exponent range, so it needs no loss scaling, and variables,
gradients, optimizer state and checkpoints stay float32 under Keras's mixed policy: a
checkpoint moves freely between fp32 and mixed_bfloat16 runs. So `auto` is resolved on
each start, by the hardware that start runs on, like TensorFlow's own TF32 default on
Ampere GPUs; the resolved value is what config.json and the start-up line show.

  GPUs: every visible GPU has compute capability >= 8.0 (Ampere and newer);
  CPU only: the CPU has AMX-BF16 (Sapphire Rapids and newer Xeons). AVX512-BF16 alone is
  not enough: without the tile units oneDNN gains little over float32.

Measured on the CI machine class (2-core AMX Xeon, seed CNN, batch 256): 2.3x the
float32 speed, and the main job's test accuracy held (README, Precision).
"""

import tensorflow as tf

AUTO = "auto"
BFLOAT16 = "mixed_bfloat16"
FP32 = "fp32"
CPUINFO = "/proc/cpuinfo"


def resolve(requested: str) -> str:
    """The precision to use for a --precision value; only `auto` is decided here."""
    return requested if requested != AUTO else auto()[0]


def auto() -> tuple[str, str]:
    """(what `auto` means on this machine, why)."""
    has_units, why = bfloat16_units()
    return (BFLOAT16 if has_units else FP32), why


def keras_policy(requested: str) -> str:
    """The Keras dtype policy that runs a --precision value."""
    resolved = resolve(requested)
    return "float32" if resolved == FP32 else resolved


def bfloat16_units() -> tuple[bool, str]:
    """(whether the devices that will train have bfloat16 matrix units, a short reason)."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                        for gpu in gpus]
        old = [c for c in capabilities if not c or tuple(c) < (8, 0)]
        if old:
            return False, f"GPU compute capability {old[0]} < 8.0"
        return True, "GPU compute capability >= 8.0"
    if "amx_bf16" in cpu_flags():
        return True, "CPU has AMX-BF16"
    return False, "no GPU, CPU without AMX-BF16"


def cpu_flags(path: str | None = None) -> set[str]:
    """The CPU feature flags Linux reports (empty where it reports none)."""
    try:
        with open(path or CPUINFO, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()
