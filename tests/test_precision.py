"""--precision auto: what it resolves to, and that a checkpoint crosses precisions."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from train import assemble, models, precision
from train import config as config_mod


def _cpuinfo(tmp_path, flags):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {' '.join(flags)}\n"
                    f"processor\t: 1\nflags\t\t: {' '.join(flags)}\n")
    return str(path)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    assert precision.cpu_flags(_cpuinfo(tmp_path, ["fpu", "amx_bf16", "avx512_bf16"])) == {
        "fpu", "amx_bf16", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("flags, expected", [
    (["avx2", "avx512f", "amx_tile", "amx_bf16"], "mixed_bfloat16"),
    (["avx2", "avx512f", "avx512_bf16"], "fp32"),  # bf16 instructions, no tile units
    (["avx2"], "fp32"),
])
def test_auto_follows_the_cpu_when_there_is_no_gpu(monkeypatch, tmp_path, flags, expected):
    monkeypatch.setattr(precision, "CPUINFO", _cpuinfo(tmp_path, flags))
    assert precision.resolve("auto") == expected
    for explicit in ("fp32", "mixed_float16", "mixed_bfloat16"):
        assert precision.resolve(explicit) == explicit  # only auto is decided


def test_auto_is_the_default_and_is_resolved_before_anything_is_built(tmp_path):
    config = config_mod.TrainConfig(workdir=str(tmp_path))
    assert config.precision == "auto"
    try:
        resolved = assemble.setup_numerics(config)
        assert resolved.precision == precision.resolve("auto") != "auto"
        expected = {"fp32": "float32"}.get(resolved.precision, resolved.precision)
        assert keras.config.dtype_policy().name == expected
    finally:
        keras.config.set_dtype_policy("float32")


def test_weights_move_between_fp32_and_mixed_bfloat16():
    """Why auto may differ between starts: the variables are float32 under both."""
    built = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.config.set_dtype_policy(policy)
        try:
            keras.utils.set_random_seed(0)
            built[policy] = models.build("cnn", (32, 32, 3), 10)
        finally:
            keras.config.set_dtype_policy("float32")
    fp32, bf16 = built["float32"], built["mixed_bfloat16"]
    assert [v.dtype for v in bf16.weights] == [v.dtype for v in fp32.weights]
    bf16.set_weights(fp32.get_weights())
    x = tf.random.stateless_uniform([8, 32, 32, 3], seed=(1, 2))
    np.testing.assert_allclose(bf16(x).numpy(), fp32(x).numpy(), atol=0.05)
