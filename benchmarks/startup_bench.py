"""How long each entry point takes to answer `--help`, and a training stage to print its first
log line, with what imports cost of that (`python -X importtime`).

    python benchmarks/startup_bench.py                  # this checkout's src/
    python benchmarks/startup_bench.py --src OTHER/src  # another checkout's, to compare

The training stage runs on a small synthetic cache in a temporary folder (one epoch of the
tiny CLIP); its first log line comes once data, model and optimiser are ready. Each figure is
the median of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ("config", "download", "preprocess", "train", "evaluate", "plot", "predict",
                "experiments", "pretrain")


def _env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src), "DVC_NO_ANALYTICS": "1"}


def help_seconds(module: str, src: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"harclip.{module}", "--help"], env=_env(src),
                   capture_output=True, check=True)
    return time.perf_counter() - started


def first_log_line(workspace: Path, src: Path) -> tuple[float, float]:
    """(seconds to the training stage's first harclip log line, seconds of imports before it
    as -X importtime counts them)."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "harclip.train", "clip"],
                               cwd=workspace, env=_env(src), stderr=subprocess.PIPE, text=True)
    imports = 0.0
    for line in process.stderr:
        if line.startswith("import time:"):
            cumulative = line.split("|")[1].strip()
            if cumulative.isdigit() and line.split("|")[2].startswith(" ") and \
                    not line.split("|")[2].startswith("  "):  # top-level imports only
                imports += int(cumulative) / 1e6
        elif " harclip " in line:
            seconds = time.perf_counter() - started
            process.kill()
            process.wait()
            return seconds, imports
    raise RuntimeError("the training stage ended without a log line")


def workspace(root: Path, src: Path) -> Path:
    """A folder with the checkout's params.yaml (1 epoch, from scratch) and a small synthetic
    cache, made with `src`."""
    import yaml

    params = yaml.safe_load((src.parent / "params.yaml").read_text())
    params["download"]["synthetic"].update(images_per_class=8, shifted_images_per_class=0,
                                           image_size=64)
    params["train_clip"].update(epochs=1, pretrained=None, head_init="random")
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    for stage in ("download", "preprocess"):
        subprocess.run([sys.executable, "-m", f"harclip.{stage}"], cwd=root, env=_env(src),
                       capture_output=True, check=True)
    return root


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ to measure")
    cli.add_argument("--repeats", type=int, default=3)
    args = cli.parse_args()
    print(f"{args.src}:")
    package = args.src / "harclip"
    for module in (m for m in ENTRY_POINTS  # a module, or a package (since the layering)
                   if (package / f"{m}.py").is_file() or (package / m / "__main__.py").is_file()):
        seconds = statistics.median(help_seconds(module, args.src)
                                    for _ in range(args.repeats))
        print(f"  python -m harclip.{module} --help: {seconds:.2f} s")
    with tempfile.TemporaryDirectory(prefix="harclip-startup-") as folder:
        root = workspace(Path(folder), args.src)
        runs = [first_log_line(root, args.src) for _ in range(args.repeats)]
    print(f"  train clip, start to first log line: {statistics.median(r[0] for r in runs):.2f} s "
          f"(imports {statistics.median(r[1] for r in runs):.2f} s of it)")


if __name__ == "__main__":
    main()
