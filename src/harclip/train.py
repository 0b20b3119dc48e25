"""train_clip / train_sglip / train_aclip: fine-tune one model, keep its best epoch.

    python -m harclip.train clip      # reads params.yaml section train_clip

The command line only: arguments and params are checked before torch is imported, so `--help`
and a mistyped key answer at once. The work is `harclip.training.run`. With nprocs above 1 the
stage relaunches itself under torchrun.
"""

from __future__ import annotations

import sys
from pathlib import Path

from harclip import stage
from harclip.cache import CACHE_DIR
from harclip.config import METHODS, load_params


def main() -> None:
    cli = stage.parser("Fine-tune one model (its params section is train_<method>) on "
                       "data/cache; write models/<method>.pt and logs/<method>/ (DVCLive).")
    cli.add_argument("method", choices=METHODS, help="which training stage to run")
    cli.add_argument("--cache", type=Path, default=CACHE_DIR, help="input (%(default)s)")
    args = cli.parse_args()

    def launch() -> None:
        config = load_params(args.params).train(args.method)  # invalid params: fail here
        from harclip import distributed, training

        if config.nprocs > 1 and not distributed.launched():
            distributed.relaunch(config.nprocs, config.device, "harclip.train", sys.argv[1:])
        training.run(args.method, config, args.cache)

    stage.run(launch)


if __name__ == "__main__":
    main()
