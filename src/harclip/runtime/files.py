"""Outputs that appear whole or not at all, and one live writer per output: a staging folder
renamed into place, and an exclusive lock the operating system drops when its holder dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harclip.runtime.errors import StageError
from harclip.runtime.log import log


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_stale_staging(final: Path) -> None:
    """Remove staging folders of `final` left by runs that died without cleaning up (SIGKILL,
    a power cut): their names carry the PID of the run that made them."""
    for stale in final.parent.glob(f".{final.name}.*"):
        owner = stale.name[len(final.name) + 2:].split(".", 1)[0]
        if stale.is_dir() and not (owner.isdigit() and process_alive(int(owner))):
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


HOLDER_NAME_WAIT_S = 3.0
"""How long a refused run waits for the holder to write its name (it locks, then writes), or
for a holder that is just finishing to let go."""


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` for the block, or fail at once naming the live
    holder. The operating system drops the lock of a process that dies, so a lock left by a
    killed run is taken over (and said so)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        deadline = time.monotonic() + HOLDER_NAME_WAIT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip()
                if holder or time.monotonic() > deadline:  # named, or never going to be
                    holder = holder or "another process"
                    raise StageError(f"{what} is already running ({holder}; lock "
                                     f"{lock_file}); wait for it to finish or stop it") from None
                time.sleep(0.05)  # a holder that has locked but not yet written its name
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
