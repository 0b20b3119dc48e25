"""harclip's torchrun: `python -m harclip.runtime.torchrun` takes torchrun's arguments and
ends as the stage does, in one line.

A stage with `nprocs` above 1 relaunches itself under it, and on several machines it is the
command each machine runs (docs/training.md). Its failures are its workers' own one-line
errors: it exits with the first failed worker's status (128 + signal for a signal) without
its launcher's ChildFailedError report and traceback, its agent's warnings about stopping
the other workers, or the C++ store's stack dumps when another machine's torchrun is gone;
a rendezvous it loses (the machine that holds it is gone) is one line too, exit 1. Its
processes share the machine's cores out (torchrun would pin each to one thread).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

from harclip.runtime.errors import first_line
from harclip.runtime.log import configure_logging, log

CPP_LOG_LEVEL = "TORCH_CPP_LOG_LEVEL"
"""Read once, when torch loads: set for this process alone, its workers keep their own."""


def torchrun_quietly(argv: list[str]) -> NoReturn:
    """Run torchrun with `argv`, then exit as the docstring above says."""
    own_level = CPP_LOG_LEVEL not in os.environ
    if own_level:
        os.environ[CPP_LOG_LEVEL] = "ERROR"
    from torch.distributed import DistError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError
    from torch.distributed.run import parse_args, run

    if own_level:
        del os.environ[CPP_LOG_LEVEL]
    configure_logging()
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args(argv)
    if str(args.nproc_per_node).isdigit():  # torchrun would pin each process to one thread
        os.environ.setdefault("OMP_NUM_THREADS",
                              str(max(1, (os.cpu_count() or 1) // int(args.nproc_per_node))))
    try:
        run(args)
    except ChildFailedError as err:
        code = err.get_first_failure()[1].exitcode
        sys.exit(128 - code if code < 0 else code or 1)
    except SignalException as err:
        sys.exit(128 + int(err.sigval))
    except (RendezvousError, DistError) as err:
        log.error("error: torchrun lost its rendezvous at %s (%s): the machine there, or "
                  "its torchrun, is gone; see its output, then rerun the command on every "
                  "machine to resume after the last saved epoch", args.rdzv_endpoint,
                  first_line(err).split(". ")[0].rstrip(".").lower())
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    torchrun_quietly(sys.argv[1:])
