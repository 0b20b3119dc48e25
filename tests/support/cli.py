"""Commands as a user runs them: `python -m harclip.<package>` in a folder, and what a clean
failure looks like (one error line naming what it must, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_module(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m harclip.<module> args` in `cwd`, its output captured."""
    return subprocess.run([sys.executable, "-m", f"harclip.{module}", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def one_line_error(stderr: str, *fragments: str) -> None:
    """The command said one thing, an error line naming what it must, and no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], stderr
