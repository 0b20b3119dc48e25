"""check_params: validate a whole params file (every section, key, type and range).

    python -m harclip.config [--params FILE]

DVC runs it on every `dvc repro`, so a mistyped section is caught even when no other stage
has to run.
"""

from __future__ import annotations

from harclip.config.params import load_params
from harclip.runtime import harness


def main() -> None:
    cli = harness.parser("Validate a whole params file: every section, key, type and range.")
    args = cli.parse_args()

    def check() -> None:
        load_params(args.params)
        print(f"{args.params}: valid")

    harness.run(check)


if __name__ == "__main__":
    main()
