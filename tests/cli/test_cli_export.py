"""harness-export (train.cli.export): a checkpoint of a run, exported into --out, evaluates
as that step did; bad input is one line on stderr and exit 2."""

import os
import re

import pytest
from model_forms import assert_usage_error, eval_json, listing

from train.cli import export_main

pytest_plugins = ["model_forms"]  # the fixtures bad_files, workdir


def test_cli_export_of_a_step_into_out(workdir, tmp_path, capsys):
    out = str(tmp_path / "serve")
    assert (
        export_main(
            ["--workdir", workdir.path, "--step", "2", "--format", "saved_model", "--out", out]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith(f"export  step=2  formats=saved_model  out={out}")
    assert listing(out) == ["export.json", "saved_model"]
    result = eval_json(
        capsys, "--saved-model", os.path.join(out, "saved_model"), "--data-dir", workdir.data_dir
    )
    assert result["accuracy"] == workdir.at_2["accuracy"]
    assert abs(result["loss"] - workdir.at_2["loss"]) <= 1e-6


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["--format", "all"], "--workdir"),
        (["--workdir", "{run}"], "--format"),
        (["--workdir", "{run}", "--format", "onnx"], "invalid choice"),
        (["--workdir", "{dir}", "--format", "all"], "no config.json"),
        (["--workdir", "{run}", "--format", "all", "--step", "7"], "no checkpoint for step 7"),
        (["--workdir", "{run}", "--format", "all", "--out", "{text}"], "not a directory"),
    ],
)
def test_export_bad_input_is_one_line_and_exit_2(argv, pattern, bad_files, workdir, capsys):
    names = {**vars(bad_files), "run": workdir.path}
    line = assert_usage_error(
        export_main([a.format(**names) for a in argv]), capsys, prog="harness-export"
    )
    assert pattern in line or re.search(pattern, line), line
