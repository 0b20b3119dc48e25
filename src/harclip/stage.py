"""What every stage entry point shares: its command line, logging, errors, signals and atomic
outputs."""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from harclip.config import DEFAULT_PARAMS, ConfigError

log = logging.getLogger("harclip")


class StageError(RuntimeError):
    """A stage cannot do its job; the message says what failed and what to do instead."""


class Stopped(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a KeyboardInterrupt): the same clean stop, exit 143."""


def progress(iterable=None, enabled: bool = True, **kwargs) -> tqdm:
    """A progress bar on a terminal; nothing when output goes to a file or a pipe (CI, logs)
    or when not `enabled` (processes other than rank 0)."""
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage takes."""
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
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


def quiet_open_clip(record: logging.LogRecord) -> bool:
    """A root-logger filter: open_clip logs through the root logger (a warning for every model
    built without pretrained weights, which is every rebuild from a checkpoint); keep only its
    errors, so stage logs show harclip's own lines."""
    return record.levelno >= logging.ERROR or "open_clip" not in Path(record.pathname).parts


def configure_logging() -> None:
    """Our own progress at INFO; other libraries only warn; open_clip only errs."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    root = logging.getLogger()
    if quiet_open_clip not in root.filters:
        root.addFilter(quiet_open_clip)


def _stop(signum: int, _frame) -> None:
    raise Stopped(signum)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        while _alive(pid):
            time.sleep(1.0)
        log.error("the dvc process that started this stage (%d) is gone; stopping", pid)
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
    Ctrl-C exits 130 and SIGTERM 143, each with one line, after the stage's own clean-up."""
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
    except KeyboardInterrupt as err:
        terminated = isinstance(err, Stopped)
        log.error("interrupted%s", " (SIGTERM)" if terminated else "")
        sys.exit(143 if terminated else 130)


def _clear_stale_staging(final: Path) -> None:
    """Remove staging folders of `final` left by runs that died without cleaning up (SIGKILL,
    a power cut): their names carry the PID of the run that made them."""
    for stale in final.parent.glob(f".{final.name}.*"):
        owner = stale.name[len(final.name) + 2:].split(".", 1)[0]
        if stale.is_dir() and not (owner.isdigit() and _alive(int(owner))):
            shutil.rmtree(stale, ignore_errors=True)
            log.info("removed %s, left by an interrupted run", stale)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final` that replaces it only if the block succeeds.

    A failed or interrupted stage leaves whatever was at `final` untouched and no half-written
    folder behind; one killed outright leaves its folder for the next run to remove.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale_staging(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", dir=final.parent))
    try:
        yield staging
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if err.filename is None:  # a write to an open file (a full disk) names no file
            err.filename = str(final)
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)


def output_lock(final: Path, what: str):
    """One live run writing `final` at a time (a direct run beside another, or beside
    `dvc repro`): the lock file beside it, named as its staging folders are."""
    return exclusive(final.parent / f".{final.name}.lock", what)


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` for the block, or fail at once naming the live
    holder. The operating system drops the lock of a process that dies, so a lock left by a
    killed run is taken over (and said so)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StageError(f"{what} is already running ({holder}; lock {lock_file}); wait "
                             f"for it to finish or stop it") from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            log.info("%s: taking over the lock of a run that ended without releasing it (%s)",
                     what, previous)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            handle.flush()
