"""train_clip / train_sglip / train_aclip: fine-tune one model, keep its best epoch.

    python -m harclip.train clip      # reads params.yaml's train merged with train_clip

The command line only: arguments and params are checked before torch is imported, so `--help`
and a mistyped key answer at once. The work is `harclip.train.stage.run`. With nprocs above 1
the stage relaunches itself under torchrun.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harclip.config.params import load_params
from harclip.config.schema import METHODS
from harclip.data.cache import CACHE_DIR
from harclip.runtime import harness


def main() -> None:
    cli = harness.parser("Fine-tune one model (its params are the sections train and "
                         "train_<method>) on data/cache; write models/<method>.pt and "
                         "logs/<method>/ (DVCLive).")
    cli.add_argument("method", choices=METHODS, help="which training stage to run")
    cli.add_argument("--cache", type=Path, default=CACHE_DIR, help="input (%(default)s)")
    args = cli.parse_args()

    def launch() -> None:
        config = load_params(args.params).train(args.method)  # invalid params: fail here
        from harclip.runtime import distributed  # torch: after the arguments and params
        from harclip.train import stage

        if config.nprocs > 1 and not distributed.launched():
            distributed.relaunch(config.nprocs, config.device, "harclip.train", sys.argv[1:])
        stage.run(args.method, config, args.cache)

    harness.run(launch)


if __name__ == "__main__":
    main()
