"""Bad input, systematically, for every console script: arguments generated from each
parser's own flags (wrong types, unknown names, unknown flags), out-of-range numbers,
conflicting flags, unreadable paths and malformed config files. Each must end with exit
2, exactly one line on stderr, no traceback, and nothing created.

The scripts run in-process (their main functions, as the console scripts call them), in
an empty working directory whose tree is compared before and after.
"""

import argparse
import dataclasses
import typing

import pytest

from benchmarks import cli as bench_cli
from launch import cli as launch_cli
from train import config as train_config
from train.cli import eval as eval_cli
from train.cli import eval_main, export_main, train_main
from train.cli import export as export_cli

from conftest import tree_snapshot

NOT_A_NUMBER = "x1"
NOT_A_CHOICE = "no-such-choice"


def _bad_values(action):
    """Values no parser could accept for this flag, from what the flag declares."""
    if action.choices:
        return [NOT_A_CHOICE]
    if action.type is int:
        return [NOT_A_NUMBER, "2.5"]
    if action.type is float:
        return [NOT_A_NUMBER]
    if callable(action.type):  # e.g. harness-bench's comma-separated integers
        return [NOT_A_NUMBER]
    return []


def generated(parser, prefix=(), required=()):
    """[(argv, what)] for every flag of `parser` that takes a typed value or a choice."""
    cases = [([*prefix, *required, "--no-such-flag"], "unknown flag")]
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        flag = action.option_strings[-1]
        for value in _bad_values(action):
            cases.append(([*prefix, *required, flag, value], f"{flag} {value}"))
    return cases


def _train_cases():
    """harness-train's flags are strings that train.config coerces to TrainConfig's field
    types, so its bad values come from those types and from the lists of names."""
    names = {
        "strategy": train_config.STRATEGIES,
        "optimizer": train_config.OPTIMIZERS,
        "precision": train_config.PRECISIONS,
        "model": ("cnn",),
        "dataset": ("shapes10",),
    }
    cases = [(["--workdir", "w", "--no-such-flag"], "unknown flag")]
    for field in dataclasses.fields(train_config.TrainConfig):
        kinds = set(typing.get_args(field.type)) or {field.type}
        flag = "--" + field.name.replace("_", "-")
        if field.name in names:
            values = [NOT_A_CHOICE]
        elif int in kinds:
            values = [NOT_A_NUMBER, "2.5"]
        elif float in kinds:
            values = [NOT_A_NUMBER]
        else:
            continue
        cases += [(["--workdir", "w", flag, value], f"{flag} {value}") for value in values]
    return cases


def _bench_cases():
    parser, cases = bench_cli.build_parser(), [([NOT_A_CHOICE], "unknown subcommand")]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        cases += generated(subparser, prefix=(name,))
    return cases


TRAIN = [
    *_train_cases(),
    (["--workdir", "w", "--steps", "0"], "zero steps"),
    (["--workdir", "w", "--steps", "-3"], "negative steps"),
    (["--workdir", "w", "--batch-size", "0"], "zero batch"),
    (["--workdir", "w", "--learning-rate", "-1"], "negative rate"),
    (["--workdir", "w", "--learning-rate", "nan"], "NaN rate"),
    (["--workdir", "w", "--learning-rate", "inf"], "infinite rate"),
    (["--workdir", "w", "--epochs", "nan"], "NaN epochs"),
    (["--workdir", "w", "--steps", "5", "--epochs", "1"], "conflicting lengths"),
    (["--workdir", "w", "--dataset", "no_such_dataset"], "unknown dataset"),
    (["--workdir", "w", "--model", "vgg"], "unknown model"),
    (["--workdir", "w", "--init-from", "/no/such/model.keras"], "unreadable path"),
    (["--workdir", "w", "--config", "/no/such/config.yaml"], "unreadable config"),
    (["--steps", "5"], "no workdir"),
]
EVAL = [
    *generated(eval_cli.build_eval_parser()),
    (["--workdir", "/no/such/run"], "no such workdir"),
    (["--weights", "/no/such/file.weights.h5"], "no such file"),
    (["--model-file", "/no/such/model.keras"], "no such model file"),
    ([], "nothing to evaluate"),
]
EXPORT = [
    *generated(export_cli.build_export_parser(), required=("--workdir", "w")),
    (["--workdir", "/no/such/run", "--format", "keras"], "no such workdir"),
    (["--format", "keras"], "no workdir"),
]
LAUNCH = [
    *generated(launch_cli._parser(), required=("--nproc", "1")),
    (["--nproc", "1", "--max-restarts", "-1", "--", "true"], "negative restarts"),
    (["--nproc", "1", "--stop-timeout", "0", "--", "true"], "zero stop timeout"),
    (["--nproc", "1", "--hostfile", "/no/such/hostfile", "--", "true"], "no hostfile"),
    (["--nproc", "1"], "no command"),
]
BENCH = _bench_cases()

CONFIG_FILES = {
    "unknown key": "no_such_flag: 3\n",
    "wrong type": "steps: many\n",
    "out of range": "batch_size: -4\n",
    "not a mapping": "- steps\n- 3\n",
    "malformed": "steps: [1, 2\n",
    "unknown choice": "optimizer: lbfgs\n",
}

MAINS = {
    "harness-train": train_main,
    "harness-eval": eval_main,
    "harness-export": export_main,
    "harness-launch": launch_cli.main,
    "harness-bench": bench_cli.main,
}


class Accepted(AssertionError):
    """A bad argument got past every check: the script was about to do real work."""


def _accepted(*args, **kwargs):
    raise Accepted("accepted: the script would now train, supervise or benchmark")


@pytest.fixture
def empty_cwd(tmp_path, monkeypatch):
    """An empty working directory; the first step of real work fails the test at once
    (after every check the scripts make, so nothing runs for long on a missed case)."""
    from launch import supervisor
    from train import assemble

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(assemble, "build_state", _accepted)
    monkeypatch.setattr(supervisor, "supervise", _accepted)
    monkeypatch.setattr(bench_cli, "run_subcommands", _accepted)
    return tmp_path


def assert_refused(main, argv, cwd, capsys, before=None):
    before = tree_snapshot(cwd) if before is None else before
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 2, (argv, code, err)
    assert err.count("\n") == 1 and err.strip(), (argv, err)
    assert "Traceback" not in err + out, argv
    assert tree_snapshot(cwd) == before, (argv, "created files")


@pytest.mark.parametrize(
    "script, argv",
    [
        *[("harness-train", argv) for argv, _ in TRAIN],
        *[("harness-eval", argv) for argv, _ in EVAL],
        *[("harness-export", argv) for argv, _ in EXPORT],
        *[("harness-launch", argv) for argv, _ in LAUNCH],
        *[("harness-bench", argv) for argv, _ in BENCH],
    ],
    ids=[
        f"{s}:{what}"
        for s, cases in (
            ("train", TRAIN),
            ("eval", EVAL),
            ("export", EXPORT),
            ("launch", LAUNCH),
            ("bench", BENCH),
        )
        for _, what in cases
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(script, argv, empty_cwd, capsys):
    assert_refused(MAINS[script], argv, empty_cwd, capsys)


@pytest.mark.parametrize("what", sorted(CONFIG_FILES))
def test_a_malformed_config_file_is_one_line_and_exit_2(what, empty_cwd, capsys):
    (empty_cwd / "run.yaml").write_text(CONFIG_FILES[what], encoding="utf-8")
    assert_refused(train_main, ["--workdir", "w", "--config", "run.yaml"], empty_cwd, capsys)


def test_the_generated_cases_cover_every_typed_flag():
    # If a parser gains a typed flag, the generator must see it (a check on the test).
    flags = {argv[-2] for argv, what in TRAIN if what.startswith("--")}
    assert {
        "--steps",
        "--batch-size",
        "--learning-rate",
        "--strategy",
        "--precision",
        "--optimizer",
        "--keep",
    } <= flags
    assert any(argv[:1] == ["checkpoint"] for argv, _ in BENCH)
