"""The ``churn`` command ends without the interpreter's teardown (``cli.entry``), and loses
nothing by it: its exit code, its unflushed output and the exit handlers registered while it ran."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from churn_assets_tests.helpers import REPO

COMMAND = """
import atexit, sys, tempfile
from pathlib import Path
from churn_assets import cli

out = Path(sys.argv[1])

class Teardown:
    def __init__(self, path):
        self.path, self.cycle = path, self  # in a cycle: freed by the teardown's garbage collection

    def __del__(self):
        open(self.path, "w").write("torn down")

def command():
    atexit.register(lambda: out.with_suffix(".handler").write_text("ran"))
    kept = tempfile.TemporaryDirectory()  # removed by an exit handler
    out.with_suffix(".tmpdir").write_text(kept.name)
    Teardown(str(out.with_suffix(".teardown")))
    sys.stdout.write("no newline, not flushed")
    return {code}

cli.main = command
cli.entry()
"""


@pytest.mark.parametrize("code", [0, 3])
def test_the_command_keeps_its_exit_code_output_and_exit_handlers(tmp_path, code):
    base = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(COMMAND.format(code=code)), str(base)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == code, done.stderr
    assert done.stdout == "no newline, not flushed"
    assert base.with_suffix(".handler").read_text() == "ran"
    assert not Path(base.with_suffix(".tmpdir").read_text()).exists()
    # The teardown itself was skipped: it is what costs ~1 s (benchmarks/README.md).
    assert not base.with_suffix(".teardown").exists()


def test_a_usage_error_exits_as_python_does(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "churn_assets.cli", "no-such-command"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_nothing_registers_an_exit_handler_before_the_command_does():
    """``entry`` registers its exit first, so that it runs after every other handler: one
    registered at import time, before it, would be skipped."""
    probe = (
        "import atexit, weakref; import churn_assets.cli; "
        "print(atexit._ncallbacks(), weakref.finalize._registered_with_atexit)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["0", "False"], done.stderr
