"""harness-eval (train.cli.eval, train.cli.saved_run): every form of one trained model
prints the same numbers; bad input is one line on stderr and exit 2, also as a process.
"""

import json
import os
import re

import pytest
from model_forms import (
    ALL_FILES,
    NUM_TEST,
    NUM_TRAIN,
    assert_usage_error,
    eval_json,
    listing,
    run_python,
)

from train import data, export
from train.cli import eval_main, saved_run

pytest_plugins = ["model_forms"]  # the fixtures bad_files, workdir, exported_run, empty_run


def test_cli_every_form_prints_the_same_numbers(workdir, exported_run, capsys):
    d = exported_run
    assert listing(d) == ALL_FILES
    meta = json.loads(open(os.path.join(d, "export.json")).read())
    assert meta["model"] == "cnn" and meta["step"] == 4 and meta["num_classes"] == 10
    results = {
        "checkpoint": eval_json(capsys, "--workdir", workdir.path),
        "weights": eval_json(
            capsys,
            "--weights",
            os.path.join(d, "model.weights.h5"),
            "--model",
            "cnn",
            "--data-dir",
            workdir.data_dir,
        ),
        "keras": eval_json(
            capsys, "--model-file", os.path.join(d, "model.keras"), "--data-dir", workdir.data_dir
        ),
        "saved_model": eval_json(
            capsys, "--saved-model", os.path.join(d, "saved_model"), "--data-dir", workdir.data_dir
        ),
    }
    assert results["checkpoint"]["source"] == "ckpt-4" and results["checkpoint"]["step"] == 4
    for name, result in results.items():
        assert result["examples"] == NUM_TEST, name
        assert result["dataset"] == "shapes10" and result["split"] == "test", name
        assert result["accuracy"] == workdir.final["accuracy"], name
        assert abs(result["loss"] - workdir.final["loss"]) <= 1e-6, name


def test_cli_eval_line_and_explicit_step(workdir, capsys):
    assert eval_main(["--workdir", workdir.path, "--step", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(
        f"eval  source=ckpt-2  dataset=shapes10  split=test  examples={NUM_TEST}  loss="
    )
    fields = dict(f.split("=") for f in line.split()[1:])
    assert float(fields["loss"]) == pytest.approx(workdir.at_2["loss"], abs=1e-6)
    assert float(fields["accuracy"]) == pytest.approx(workdir.at_2["accuracy"], abs=1e-6)


def test_cli_eval_of_another_split_reports_it(workdir, capsys):
    """--split takes any split the dataset has and the result names the one evaluated
    (only 'test' was accepted, and 'test' was reported even for 'validation')."""
    result = eval_json(capsys, "--workdir", workdir.path, "--split", "train")
    assert (result["split"], result["examples"]) == ("train", NUM_TRAIN)
    info = data.dataset_info("shapes10", workdir.data_dir)
    restored = saved_run.restore_checkpoint(workdir.path)
    expected = export.evaluate(
        export.make_predict_fn(restored.model),
        data.eval_dataset(
            info, workdir.data_dir, global_batch_size=100, float_images=True, split="train"
        ),
    )
    assert result["accuracy"] == expected["accuracy"] and result["examples"] == NUM_TRAIN


def test_cli_eval_of_a_split_the_dataset_lacks_is_one_line(workdir, capsys):
    assert eval_main(["--workdir", workdir.path, "--split", "validation"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "has no split 'validation'; it has test, train" in err


@pytest.mark.parametrize(
    "argv, pattern",
    [
        ([], "exactly one of --workdir, --weights, --model-file, --saved-model"),
        (["--model-file", "{keras}", "--saved-model", "{saved_model}"], r"exactly one .*got"),
        (["--weights", "{weights}"], "--weights needs --model"),
        (["--model", "cnn", "--model-file", "{keras}"], "--model goes with --weights"),
        (["--step", "3", "--model-file", "{keras}"], "--step goes with --workdir"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--model-file", "{keras}", "--batch-size", "many"], "--batch-size: invalid int"),
        (["--model-file", "{keras}", "--batch-size", "0"], "--batch-size must be positive"),
        (["--model-file", "/no/such/model.keras"], "--model-file /no/such/model.keras: no such"),
        (
            ["--model-file", "{weights}"],
            "--model-file .*: not a whole-model .keras archive: .*use --weights",
        ),
        (
            ["--model-file", "{text}"],
            "--model-file .*: not a whole-model .keras archive: unrecognised",
        ),
        (["--saved-model", "{dir}"], "--saved-model .*: not a SavedModel directory"),
        (
            ["--weights", "{keras}", "--model", "cnn"],
            r"--weights .*: not a Keras weights file \(\*.weights.h5\): .*--model-file",
        ),
        (["--saved-model", "{export_dir}"], "holding an export .*saved_model/ in it"),
        (["--saved-model", "{run}"], "it is a harness-train run directory .*use --workdir"),
        (["--model-file", "{run}/checkpoints"], "holds training checkpoints .*use --workdir"),
        (["--workdir", "/no/such/run"], "--workdir /no/such/run: no such directory"),
        (["--workdir", "{dir}"], "no config.json"),
        (
            ["--workdir", "{run}", "--step", "3"],
            r"no checkpoint for step 3 .*steps there: \[2, 4\]",
        ),
        (["--workdir", "{empty_run}"], r"--workdir .*: no checkpoint in .*checkpoints"),
        (
            ["--model-file", "{keras}", "--data-dir", "{data_dir}"],
            "takes 18x18x3 images and predicts 4 classes; dataset 'shapes10' has 32x32x3",
        ),
        (
            ["--weights", "{run_weights}", "--model", "resnet20", "--data-dir", "{data_dir}"],
            "weights do not fit model 'resnet20'",
        ),
        (
            ["--weights", "{run_weights}", "--model", "vgg", "--data-dir", "{data_dir}"],
            "unknown model 'vgg'",
        ),
        (
            ["--model-file", "{keras}", "--dataset", "nosuchset", "--data-dir", "{data_dir}"],
            "unknown dataset 'nosuchset'",
        ),
    ],
)
def test_eval_bad_input_is_one_line_and_exit_2(
    argv, pattern, bad_files, workdir, exported_run, empty_run, capsys
):
    names = {
        **vars(bad_files),
        "run": workdir.path,
        "data_dir": workdir.data_dir,
        "run_weights": os.path.join(exported_run, "model.weights.h5"),
        "export_dir": exported_run,
        "empty_run": empty_run,
    }
    line = assert_usage_error(eval_main([a.format(**names) for a in argv]), capsys)
    assert re.search(pattern, line), line


_EVAL = "import sys; from train.cli import eval_main; sys.exit(eval_main(sys.argv[1:]))"


def test_subprocess_bad_path_is_exactly_one_stderr_line(bad_files):
    """TensorFlow's start-up banner is held back and the path is checked before anything is
    loaded: nothing else reaches stderr."""
    proc = run_python(_EVAL, "--model-file", bad_files.weights)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"harness-eval: error: --model-file {bad_files.weights}: not a whole-model .keras "
        "archive: it is an HDF5 weights file (use --weights FILE --model NAME)"
    ]


@pytest.mark.slow
def test_subprocess_mismatch_after_tensorflow_has_no_traceback(workdir, exported_run):
    """A mismatch found with TF loaded: our one line, last; TF's own start-up log lines are
    the only other stderr output (TF 2.21 prints them on import whatever the log level)."""
    proc = run_python(
        _EVAL,
        "--weights",
        os.path.join(exported_run, "model.weights.h5"),
        "--model",
        "resnet20",
        "--data-dir",
        workdir.data_dir,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    assert "Traceback" not in proc.stderr
    ours = [line for line in lines if line.startswith("harness-eval:")]
    assert ours == [lines[-1]] and "do not fit model 'resnet20'" in ours[0]
    tf_log = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl)")
    assert all(tf_log.match(line) for line in lines[:-1]), lines
