"""What every stage entry point shares: its command line, logging, errors and atomic outputs."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from harclip.config import DEFAULT_PARAMS, ConfigError

log = logging.getLogger("harclip")


class StageError(RuntimeError):
    """A stage cannot do its job; the message says what failed and what to do instead."""


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


def run(main: Callable[[], None]) -> None:
    """Run a stage's main with readable logs; expected failures exit 2 with one clear line."""
    # Our own progress at INFO; libraries (open_clip logs every model build) only warn.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    log.setLevel(logging.INFO)
    try:
        main()
    except (ConfigError, StageError, FileNotFoundError) as err:
        log.error("error: %s", err)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("interrupted")
        sys.exit(130)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final` that replaces it only if the block succeeds.

    A failed or interrupted stage leaves whatever was at `final` untouched and no half-written
    folder behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.chmod(0o755)  # mkdtemp makes it private; the output is an ordinary folder
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
