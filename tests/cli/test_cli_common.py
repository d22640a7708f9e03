"""train.cli: --help exits 0; the module forms of harness-eval and harness-export; the
package imports without TensorFlow and without an import circle."""

import pytest
from model_forms import run_python

from train.cli import eval_main, export_main

from conftest import run_module


def test_help_exits_0(capsys):
    assert eval_main(["--help"]) == 0
    assert "--saved-model" in capsys.readouterr().out
    assert export_main(["--help"]) == 0
    assert "export/ckpt-STEP" in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")


def test_cli_and_export_import_without_tensorflow():
    """Each module of train.cli imports on its own, first (no circle), and none of them,
    nor train.export, imports TensorFlow before a main runs."""
    code = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "    assert 'tensorflow' not in sys.modules, name\n"
        "print('OK')"
    )
    for first in (
        "train.cli",
        "train.cli.common",
        "train.cli.saved_run",
        "train.cli.eval",
        "train.cli.export",
        "train.cli.train",
        "train.export",
    ):
        proc = run_python(
            code, first, "train.cli", "train.cli.eval", "train.cli.export", "train.export"
        )
        assert proc.returncode == 0 and proc.stdout == "OK\n", (first, proc.stderr)


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, prog, flag",
    [
        ("train.cli.eval", "harness-eval", "--saved-model"),
        ("train.cli.export", "harness-export", "--format"),
    ],
)
def test_module_forms_are_the_console_scripts(module, prog, flag):
    """python -m train.cli.eval == harness-eval, python -m train.cli.export == harness-export
    (README); runpy warns of nothing on stderr."""
    proc = run_module(module, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {prog} ") and flag in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr
