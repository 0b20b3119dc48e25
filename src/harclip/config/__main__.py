"""check_params: validate a whole params file (every section, key, type and range) and
find every pretrained file it names.

    python -m harclip.config [--params FILE]

DVC runs it first on every plain `dvc repro` (`always_changed` in dvc.yaml), so a mistyped
section is caught even when no other stage has to run, and a missing start before DVC removes
a training stage's outputs (`dvc repro <stage>` skips it: no stage depends on it).
"""

from __future__ import annotations

from harclip.config.params import check_starts, load_params
from harclip.runtime import harness


def main() -> None:
    cli = harness.parser("Validate a whole params file: every section, key, type and range, "
                         "and every pretrained file it names.")
    args = cli.parse_args()

    def check() -> None:
        check_starts(load_params(args.params), args.params)
        print(f"{args.params}: valid")

    harness.run(check)


if __name__ == "__main__":
    main()
