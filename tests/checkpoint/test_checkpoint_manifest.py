"""train.checkpoint.manifest: damage is found and fallen back over, format 1 still reads, another
model does not fit."""

import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import pytest  # noqa: E402
from checkpoint_helpers import (  # noqa: E402
    C1,
    C2,
    assert_values,
    flip_data_bytes,
    manager,
    tiny_state,
    truncate_data,
    write_pointer,
)

from train.checkpoint import files as cf  # noqa: E402
from train.checkpoint import manifest as cm  # noqa: E402
from train.errors import CheckpointError  # noqa: E402

pytest_plugins = ["checkpoint_helpers"]  # the fixtures ckdir, two_saved


@pytest.mark.parametrize(
    "damage,expected,named",
    [
        (truncate_data, 1, "ckpt-00000002"),
        (flip_data_bytes, 1, "ckpt-00000002"),
        (lambda p: os.unlink(os.path.join(p, "manifest.json")), 1, "ckpt-00000002"),
        (lambda p: write_pointer(os.path.dirname(p), "garbage!"), 2, "garbage"),
        (lambda p: write_pointer(os.path.dirname(p), ""), 2, "empty"),
        (lambda p: write_pointer(os.path.dirname(p), "ckpt-00000009\n"), 2, "ckpt-00000009"),
    ],
)
def test_damage_falls_back_with_a_warning(ckdir, two_saved, caplog, damage, expected, named):
    damage(os.path.join(ckdir, "ckpt-00000002"))
    state = tiny_state()
    with caplog.at_level(logging.WARNING, logger="train.checkpoint.manager"):
        with manager(ckdir, state) as m:
            assert m.restore() == expected
    assert named in caplog.text
    if damage is flip_data_bytes:  # caught by the restoring read: TF's words, not its op's
        assert "Checksum does not match" in caplog.text and "function_node" not in caplog.text
    assert_values(state, two_saved[expected])


def _as_format_1(path):
    """Rewrite a checkpoint's manifest as format 1 wrote it: a sha256 for every file."""
    manifest = cm.load_manifest(path, cf.parse_step(os.path.basename(path)))
    for name, record in manifest["files"].items():
        record.pop("check", None)
        record["sha256"] = cm.file_sha256(os.path.join(path, name))
    cm.write_manifest(os.path.join(path, "manifest.json"), dict(manifest, format_version=1))


def test_data_shard_is_checked_by_tensor_crcs_and_format_1_still_reads(ckdir, two_saved):
    files = cm.load_manifest(os.path.join(ckdir, C2), 2)["files"]
    assert files["state.data-00000-of-00001"] == {
        "size": os.path.getsize(os.path.join(ckdir, C2, "state.data-00000-of-00001")),
        "check": "tensor_crc32c",
    }
    assert set(files["state.index"]) == {"size", "sha256"}
    _as_format_1(os.path.join(ckdir, C2))
    _as_format_1(os.path.join(ckdir, C1))
    flip_data_bytes(os.path.join(ckdir, C2))  # caught by format 1's sha256 of the shard
    state = tiny_state()
    with manager(ckdir, state) as m:
        assert m.restore() == 1
    assert_values(state, two_saved[1])


def test_another_model_is_an_error_not_a_fallback(ckdir, two_saved):
    with manager(ckdir, tiny_state(units=5)) as m:
        with pytest.raises(
            CheckpointError,
            match=r"ckpt-00000002 does not fit this model: "
            r"variable model\[0\] \(.*kernel\) has shape \(4, 5\), "
            r"checkpoint has \(4, 3\)",
        ):
            m.restore()
