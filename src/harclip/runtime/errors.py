"""The errors a stage may end with: each is one line that says what failed and what to do."""

from __future__ import annotations


class StageError(RuntimeError):
    """A stage cannot do its job; the message says what failed and what to do instead."""


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or holds a value the pipeline cannot use."""


class Stopped(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a KeyboardInterrupt): the same clean stop, exit 143."""
