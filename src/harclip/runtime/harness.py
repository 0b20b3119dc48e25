"""What every entry point shares: its command line, readable logs, one-line errors, signals,
and a stop when the `dvc` process that started it is gone."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harclip.runtime.errors import ConfigError, StageError, Stopped
from harclip.runtime.files import process_alive
from harclip.runtime.log import configure_logging, log

PARAMS_FILE = Path("params.yaml")
"""The params file a stage reads unless `--params` names another."""


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage takes."""
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument("--params", type=Path, default=PARAMS_FILE,
                     help="params file to read (default: %(default)s)")
    return cli


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return value


_STOP_CAUSE: dict[str, str] = {}
"""Why this process sent itself SIGTERM, where it did (its `dvc` is gone)."""
ORPHAN_GRACE_S = 2.0
"""How long a stage whose `dvc` is gone waits for a signal of its own (a whole process group
stopped together) before it stops itself: Python runs a signal's handler only between two
bytecodes, so a long torch call delays it."""


def _stop(signum: int, _frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop: a second must not cut the clean-up
    _STOP_CAUSE.setdefault("signalled", "yes")
    raise Stopped(signum, _STOP_CAUSE.get("cause"))


def _dvc_ancestor() -> int | None:
    """The `dvc` process that started this stage (through a shell, maybe), if there is one."""
    pid = os.getppid()
    for _ in range(4):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if any(Path(arg.decode(errors="replace")).name == "dvc" for arg in argv[:3]):
            return pid
        pid = parent
    return None


def _stop_with(pid: int) -> None:
    """Stop this stage (as SIGTERM would) once process `pid` is gone: `dvc repro` killed by a
    timeout or a preemption must not leave a stage running that later overwrites the outputs
    DVC restored meanwhile."""
    def watch() -> None:
        while process_alive(pid):
            time.sleep(1.0)
        time.sleep(ORPHAN_GRACE_S)
        if "signalled" in _STOP_CAUSE:  # stopped with its dvc: that signal says what happened
            return
        _STOP_CAUSE["cause"] = f"stopped: the dvc process that started this stage ({pid}) " \
                               f"is gone (killed or stopped)"
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dvc-watch", daemon=True).start()


def _one_line(err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space and rerun (what was " \
               f"already written is kept)"
    return f"{err.strerror or err}{where}"


def run(main: Callable[[], None]) -> None:
    """Run a stage's main with readable logs. Expected failures exit 2 with one clear line;
    Ctrl-C exits 130 and SIGTERM 143, each with one line (what stopped it, then the notes a
    stage added on the way out: how to resume), after the stage's own clean-up."""
    configure_logging()
    signal.signal(signal.SIGTERM, _stop)
    if os.environ.get("DVC_STAGE") and (dvc := _dvc_ancestor()):
        _stop_with(dvc)
    try:
        main()
    except (ConfigError, StageError, FileNotFoundError) as err:
        log.error("error: %s", err)
        sys.exit(2)
    except OSError as err:
        log.error("error: %s", _one_line(err))
        sys.exit(2)
    except RuntimeError as err:
        if "torch.distributed" not in sys.modules:
            raise
        from harclip.runtime.distributed import lost_peer  # torch: loaded by now

        if (line := lost_peer(err)) is None:
            raise
        log.error("error: %s", line)
        sys.exit(2)
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Stopped)
        what = (err.cause or "interrupted (SIGTERM)") if terminated else "interrupted"
        log.error("%s", "; ".join([what, *getattr(err, "__notes__", ())]))
        sys.exit(143 if terminated else 130)
