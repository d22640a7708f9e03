import json

import pytest

from train import config as config_lib
from train.errors import UsageError


def parse(tmp_path, *flags):
    return config_lib.parse_args(["--workdir", str(tmp_path / "run"), *flags])


def test_defaults_run_the_seed_cnn_on_the_builtin_dataset(tmp_path):
    config = parse(tmp_path)
    assert (config.model, config.dataset, config.strategy) == ("cnn", "shapes10", "auto")
    assert config.steps == 2000 and config.epochs is None


def test_flags_override_config_file_which_overrides_defaults(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("batch-size: 64\nlearning_rate: 0.01\nsteps: 7\n")
    config = parse(tmp_path, "--config", str(path), "--steps", "9")
    assert (config.batch_size, config.learning_rate, config.steps) == (64, 0.01, 9)


def test_json_config_and_epochs_replace_default_steps(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"epochs": 2, "deterministic": True}))
    config = parse(tmp_path, "--config", str(path))
    assert (config.epochs, config.steps, config.deterministic) == (2.0, None, True)


def test_a_length_flag_overrides_the_files_other_length(tmp_path):
    """--steps on the command line replaces the file's epochs, and --epochs its steps:
    flags override the file, the run's length included (it was refused as "not both")."""
    by_epochs, by_steps = tmp_path / "e.yaml", tmp_path / "s.yaml"
    by_epochs.write_text("epochs: 3\n")
    by_steps.write_text("steps: 70\n")
    config = parse(tmp_path, "--config", str(by_epochs), "--steps", "9")
    assert (config.steps, config.epochs) == (9, None)
    config = parse(tmp_path, "--config", str(by_steps), "--epochs", "0.5")
    assert (config.steps, config.epochs) == (None, 0.5)


def test_a_file_that_gives_both_lengths_is_refused(tmp_path):
    """A file with steps and epochs used to drop steps silently."""
    path = tmp_path / "both.yaml"
    path.write_text("steps: 70\nepochs: 3\n")
    with pytest.raises(UsageError, match=r"both.yaml: give --steps or --epochs, not both"):
        parse(tmp_path, "--config", str(path))
    with pytest.raises(UsageError, match="not both"):
        parse(tmp_path, "--steps", "5", "--epochs", "1")


def test_boolean_flags_and_signal_lists(tmp_path):
    config = parse(
        tmp_path, "--no-augment", "--async-checkpoint", "--preemption-signals", "SIGTERM,SIGUSR2"
    )
    assert config.augment is False and config.async_checkpoint is True
    assert config.preemption_signals == ("SIGTERM", "SIGUSR2")


def test_horovod_fp16_allreduce_flag(tmp_path):
    assert parse(tmp_path).horovod_fp16_allreduce is False
    config = parse(tmp_path, "--strategy", "horovod", "--horovod-fp16-allreduce")
    assert config.horovod_fp16_allreduce is True


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--steps", "0"], "--steps must be positive"),
        (["--steps", "-3"], "--steps must be positive"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--learning-rate", "-0.1"], "--learning-rate must be positive"),
        (["--learning-rate", "fast"], "--learning-rate: invalid value"),
        (["--model", "vgg"], "unknown model 'vgg'"),
        (["--strategy", "tpu"], "unknown strategy 'tpu'"),
        (["--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["--precision", "fp8"], "unknown precision 'fp8'"),
        (["--steps", "5", "--epochs", "1"], "not both"),
        (["--preemption-signals", "SIGNOPE"], "unknown signal 'SIGNOPE'"),
        (["--replicas", "2", "--strategy", "default"], "--replicas applies to"),
        (
            ["--horovod-fp16-allreduce", "--strategy", "multiworker"],
            "applies to --strategy horovod",
        ),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_flags_name_the_problem(tmp_path, flags, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        parse(tmp_path, *flags)


def test_missing_or_malformed_config_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read"):
        parse(tmp_path, "--config", str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="malformed"):
        parse(tmp_path, "--config", str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("wings: 2\n")
    with pytest.raises(UsageError, match="unknown key 'wings'"):
        parse(tmp_path, "--config", str(unknown))


def test_workdir_that_is_a_file_or_unwritable(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        config_lib.parse_args(["--workdir", str(file)])
    with pytest.raises(UsageError, match="not a directory"):
        config_lib.parse_args(["--workdir", str(file / "sub")])
    with pytest.raises(UsageError, match="--workdir is required"):
        config_lib.parse_args([])


def test_help_documents_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit):
        config_lib.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in config_lib.TrainConfig.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in text
    assert "(default: 128)" in text and "(default: shapes10)" in text


@pytest.mark.parametrize(
    "message, line",
    [
        ("", "ValueError"),
        ("   \n\n", "ValueError"),
        ("\n  first  \nsecond", "first"),
        ("only", "only"),
    ],
)
def test_first_line_of_an_error_is_never_blank_and_never_fails(message, line):
    """One helper for every one-line error (two of its former copies raised IndexError on
    an empty message)."""
    from train.errors import first_line

    assert first_line(ValueError(message)) == line


def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1,\n")
    with pytest.raises(UsageError, match=r"bad.yaml: malformed \(.+\)$"):
        parse(tmp_path, "--config", str(path))
