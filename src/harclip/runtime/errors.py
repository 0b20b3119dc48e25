"""The errors a stage may end with: each is one line that says what failed and what to do."""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot do its job; the message says what failed and what to do instead."""


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or holds a value the pipeline cannot use."""


class Stopped(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a KeyboardInterrupt): the same clean stop, exit 143.
    `cause` says what stopped the stage where it was not a signal from outside (the `dvc`
    process that started it is gone); a stage adds what to do next as a note."""

    def __init__(self, signum: int, cause: str | None = None) -> None:
        super().__init__(signum)
        self.cause = cause


def first_line(err: BaseException) -> str:
    """The first line of an error's message ("" for none): libraries' messages can run to many
    lines, and a stage's error is one."""
    return (str(err).strip().splitlines() or [""])[0]
