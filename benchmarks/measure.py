"""Peak memory and wall time of a stage's command, for the benchmarks that run whole stages."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _high_water_mark(pid: int) -> int:
    """A live process's peak RSS in bytes (VmHWM: its own since exec, where getrusage's
    ru_maxrss would count the benchmark's pages it was forked with)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def peak_memory(command: list[str], cwd: Path | None = None) -> tuple[float, float, float]:
    """Run `command`; (seconds, its peak RSS, its process tree's peak) in MB, read every
    50 ms: the first is the kernel's high-water mark at the last reading, the second the
    largest sum of the tree's RSS seen."""
    import psutil

    start = time.perf_counter()
    process = psutil.Popen(command, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                           stdout=subprocess.DEVNULL)
    stage_peak = tree_peak = 0
    while process.poll() is None:
        try:
            stage_peak = max(stage_peak, _high_water_mark(process.pid))
            tree = [process, *process.children(recursive=True)]
            tree_peak = max(tree_peak, sum(p.memory_info().rss for p in tree))
        except (psutil.Error, OSError):
            pass
        time.sleep(0.05)
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed ({process.returncode})")
    return time.perf_counter() - start, stage_peak / 2**20, tree_peak / 2**20
