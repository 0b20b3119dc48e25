"""The GPU check: every path the HAR recipe takes on a GPU, in one command, with its figures.

    bash benchmarks/gpu_check.sh OUT_DIR              # a GPU machine without network (wheels)
    python benchmarks/gpu_check.py OUT_DIR            # where the packages are installed
    python benchmarks/gpu_check.py OUT_DIR --small    # tiny shapes on the CPU (a test runs it)

On a HAR-sized synthetic cache (10,080 train / 2,520 val images at 224 px) it runs each
training stage's own command (`python -m harclip.train <method>`) with the recipe's
architectures, precision, compile and batch settings (configs/har-recipe.yaml) for 2 epochs,
random initialisation (`--pretrained` keeps the recipe's weights, which must then be in the
local cache) and a random head (SigLIP's tokenizer is a hub download); interrupts the CLIP run
after its first epoch and resumes it; evaluates and predicts (the stages' own functions) from
the checkpoints written;
runs the CLIP stage under torchrun as a one-process group (DistributedDataParallel around the
compiled tower, whatever the GPU count); counts host–device synchronisations per steady
training step; with 2 or more GPUs, runs one stage with `nprocs: 2` (NCCL, compiled). It
prints one table and writes it as gpu_check.json and gpu_check.md into OUT_DIR after every
phase, with the stages' logs in gpu_check.log, so a run cut short still leaves a valid report.
A phase past its time (`--budget-s` for the whole check) is a failed check whose processes are
killed; once the budget is spent no phase starts, and those left are reported as not run.
SIGTERM or Ctrl-C writes the report, then exits (143 / 130). Exit status 1 if a check failed.

Figures come from the last epoch (steady state): the first includes compilation, reported as
its excess over the last. A-CLIP refreshes its cached saliency every epoch here, so its
refresh is measured in the steady epoch too; validation runs eager and is timed apart.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from harclip.config.params import load_params, parse_params
from harclip.config.schema import METHODS
from harclip.data.cache import CacheItem, load_split, write_cache
from harclip.data.layout import CLASS_NAMES
from harclip.data.records import read_epochs, read_run
from harclip.data.synthetic.scenes import generate
from harclip.evaluate.stage import evaluate
from harclip.model.backbones import image_normalisation, model_image_size
from harclip.model.checkpoints import load_checkpoint
from harclip.model.classifier import build_model
from harclip.model.feed import CachedSplit, effective_batches
from harclip.model.views import DeviceAugment
from harclip.predict.classify import classify, image_files
from harclip.runtime.devices import describe, resolve_device
from harclip.runtime.log import configure_logging
from harclip.train.engine import Trainer
from harclip.train.stage import build_objective

ROOT = Path(__file__).resolve().parents[1]

HAR_TRAIN, HAR_VAL = 10_080, 2_520
TINY = {"clip": "harclip-tiny-clip", "sglip": "harclip-tiny-siglip", "aclip": "harclip-tiny-clip"}
RESUMED = "clip"
TARGETS_S = {"clip": 1.7, "sglip": 3.5, "aclip": 2.9}
"""Steady-state seconds per HAR epoch on one H100 (issue 10's targets; A-CLIP's excludes its
refresh, whose own target is REFRESH_TARGET_S)."""
REFRESH_TARGET_S = 1.0
MIN_PHASE_S = 20.0
"""A phase starts only with at least this much of the budget left (none runs past it)."""


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


class PhaseTimeout(Exception):
    """A stage ran past the time left; its processes were killed."""


class Stopped(BaseException):
    """SIGTERM: write the report, then exit (a BaseException, as Ctrl-C is: no phase takes
    it for its own failure)."""


@dataclass
class Report:
    """Everything measured so far, written out whole after every phase."""

    out: Path
    meta: dict
    started: float = field(default_factory=time.perf_counter)
    figures: dict = field(default_factory=dict)
    syncs: dict = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def write(self) -> str:
        meta = {**self.meta, "wall_s": time.perf_counter() - self.started}
        lines = [f"GPU check on {meta['hardware']}; torch {meta['torch']}; "
                 f"{meta['train_images']} train / {meta['val_images']} val images at "
                 f"{meta['image_size']} px; {meta['wall_s']:.0f} s in all", "",
                 "| stage | img/s | s per HAR epoch | compile s | refresh s | val s "
                 "| peak MB above cache | cache MB | syncs/step | one-H100 target |",
                 "| :-- | --: | --: | --: | --: | --: | --: | --: | --: | :-- |"]
        for method, row in self.figures.items():
            sync = self.syncs.get(method)
            lines.append(
                f"| train_{method} | {row['images_per_s']:,.0f} | {row['har_epoch_s']:.2f} | "
                f"{row['compile_s']:.1f} | {row['refresh_s']:.2f} | {row['val_s']:.2f} | "
                f"{row['peak_mb_above_cache']:,.0f} | {row['cache_mb']:,.0f}"
                f"{'' if row['cache_on_device'] else ' (host)'} | "
                f"{'n/a' if sync is None else f'{sync:g}'} | {row['target']} |")
        lines += ["", "| check | result | detail |", "| :-- | :-: | :-- |"]
        lines += [f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |"
                  for c in self.checks]
        text = "\n".join(lines) + "\n"
        self.out.mkdir(parents=True, exist_ok=True)
        for name, content in (("gpu_check.md", text), ("gpu_check.json", json.dumps(
                {**meta, "figures": self.figures, "syncs_per_step": self.syncs,
                 "checks": [asdict(c) for c in self.checks]}, indent=2) + "\n")):
            partial = self.out / f".{name}.partial"
            partial.write_text(content)
            partial.replace(self.out / name)
        return text


class Workspace:
    """A folder laid out as the repo (params.yaml, data/cache) where the stages run, each
    given at most the time left (`deadline`)."""

    def __init__(self, root: Path, log: Path, deadline: float) -> None:
        self.root, self.log, self.deadline = root, log, deadline
        self.running: subprocess.Popen | None = None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                os.environ.get("PYTHONPATH")]))}

    def write_params(self, params: dict, name: str = "params.yaml") -> Path:
        path = self.root / name
        path.write_text(yaml.safe_dump(params, sort_keys=False))
        return path

    def start(self, *args: str) -> subprocess.Popen:
        """`python -m <args>` in its own process group (a stage and the workers it starts)."""
        with open(self.log, "a") as handle:
            handle.write(f"\n$ python -m {' '.join(args)}\n")
            handle.flush()
            self.running = subprocess.Popen([sys.executable, "-m", *args], cwd=self.root,
                                            env=self.env, stdout=handle,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        return self.running

    def wait(self, process: subprocess.Popen) -> int:
        """The exit status, or PhaseTimeout once the budget's time is over (the stage and
        every process it started killed)."""
        timeout = max(0.0, self.deadline - time.perf_counter())
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PhaseTimeout(f"killed after {timeout:.0f} s (the budget's time left)") \
                from None

    def kill(self) -> None:
        """End the running stage and everything it started: SIGTERM to its process group,
        then SIGKILL to every descendant still there (torchrun starts its workers in sessions
        of their own, and a worker stuck in a collective never runs its SIGTERM handler)."""
        process, self.running = self.running, None
        if process is None or process.poll() is not None:
            return
        tree = [process.pid, *descendants(process.pid)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        process.wait()

    def run(self, *args: str) -> tuple[int, float]:
        started = time.perf_counter()
        return self.wait(self.start(*args)), time.perf_counter() - started


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (no psutil on a bare GPU machine)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def build_cache(cache: Path, train: int, val: int, size: int) -> None:
    """A synthetic cache of train + val images: a few hundred drawn HAR-like images, repeated
    (speed does not depend on the pixels)."""
    unique = [(CLASS_NAMES.index(label), np.asarray(image).transpose(2, 0, 1).copy())
              for label, image in generate(20, size, seed=0)]
    items = [CacheItem(f"synthetic_{i}.png", unique[i % len(unique)][0], f"{i}",
                       unique[i % len(unique)][1]) for i in range(train + val)]
    split_of = np.array([0] * train + [1] * val)
    write_cache(cache, items, split_of, list(CLASS_NAMES), size)


def check_params(small: bool, pretrained: bool, device: str) -> dict:
    """The recipe's params, shortened to 2 epochs (3 for the resumed run) with a random head."""
    params = yaml.safe_load((ROOT / "configs" / "har-recipe.yaml").read_text())
    for method in METHODS:
        section = params[f"train_{method}"]
        section.update(epochs=3 if method == RESUMED else 2, head_init="random",
                       log_every=10**6, warmup_epochs=0.5, resume_every=1, device=device)
        if not pretrained:
            section["pretrained"] = None
        if small:
            section.update(model=TINY[method], pretrained=None, batch_size=32, compile=False,
                           image_size=None)
    params["train_aclip"]["aclip"]["refresh_epochs"] = 1
    parse_params(params, Path("the GPU check's params"))  # invalid ones fail here, first
    return params


def train_stage(ws: Workspace, method: str, report: Report) -> None:
    """One training stage's own command; the CLIP run interrupted after epoch 1, resumed."""
    if method == RESUMED:
        process = ws.start("harclip.train", method)
        state = ws.root / ".harclip" / "resume" / method / "state.pt"
        while not state.is_file() and process.poll() is None \
                and time.perf_counter() < ws.deadline:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        interrupted = ws.wait(process)
        report.checks.append(Check(f"train_{method}: Ctrl-C after epoch 1", interrupted == 130,
                                   f"exit status {interrupted} (130 expected)"))
    code, seconds = ws.run("harclip.train", method)
    ran = code == 0 and (ws.root / "models" / f"{method}.pt").is_file()
    report.checks.append(Check(f"train_{method}", ran, f"exit status {code} in {seconds:.0f} s"))
    if not ran:
        return
    rows = read_epochs(ws.root / "logs" / method)
    if method == RESUMED:
        resumed = "resuming after epoch 1" in ws.log.read_text() and \
            [r["epoch"] for r in rows] == [1, 2, 3]
        report.checks.append(Check(f"train_{method}: resumed after epoch 1", resumed,
                                   f"epochs logged: {[int(r['epoch']) for r in rows]}"))
    train = read_run(ws.root / "logs" / method)
    last, first = rows[-1], rows[0]
    report.figures[method] = {
        "images_per_s": last["images_per_s"],
        "har_epoch_s": HAR_TRAIN / last["images_per_s"],
        "refresh_s": last["refresh_time_s"],
        "val_s": last["val_time_s"],
        "compile_s": max(0.0, first["epoch_time_s"] - last["epoch_time_s"]),
        "peak_mb_above_cache": last["peak_memory_mb"],
        "cache_mb": train["cache_mb"],
        "cache_on_device": train["cache_on_device"],
        "val_acc": last["val_acc"],
        "target": "n/a (no GPU run)",
    }


def evaluate_and_predict(ws: Workspace, device: torch.device, report: Report) -> None:
    """The evaluate stage's and predict's own functions on the checkpoints written (in this
    process: a stage's start costs more than its work here)."""
    models, cache = ws.root / "models", ws.root / "data" / "cache"
    written = [m for m in METHODS if (models / f"{m}.pt").is_file()]
    for method in written:
        try:
            config = replace(load_params(ws.root / "params.yaml").evaluate, device=str(device),
                             wise_alphas=())
            scores = evaluate(method, config, cache, models, ws.root / "metrics")
            report.checks.append(Check(f"evaluate@{method}", "val_acc" in scores,
                                       f"val accuracy {scores['val_acc']:.3f}"))
        except Exception as err:  # a check reports what broke and goes on
            report.checks.append(Check(f"evaluate@{method}", False,
                                       f"{type(err).__name__}: {err}"))
    images, _ = load_split(cache, "val")
    folder = ws.root / "photos"
    folder.mkdir(exist_ok=True)
    for index in range(8):
        Image.fromarray(np.asarray(images[index]).transpose(1, 2, 0)).save(folder / f"{index}.png")
    for method in written[:1]:
        model, meta = load_checkpoint(models / f"{method}.pt")
        predicted, skipped = classify(model, meta, image_files([folder]), device=device)
        ok = len(predicted) == 8 and not skipped and \
            all(set(p.labels) <= set(CLASS_NAMES) for p in predicted)
        report.checks.append(Check(f"predict with {method}.pt", ok,
                                   f"{len(predicted)} of 8 images, {len(skipped)} skipped"))


def syncs_per_step(params: dict, cache: Path, device: torch.device, report: Report,
                   steps: int = 3) -> None:
    """Host–device synchronisations per steady training step of each stage's own model and
    objective (eager: compile only fuses kernels), counted by CUDA's sync debug mode."""
    if device.type != "cuda":
        return
    images, labels = load_split(cache, "train")
    for method in METHODS:
        config = parse_params(params, Path("the GPU check's params")).train(method)
        config = type(config)(**{**asdict(config), "compile": False})
        model, prompts = build_model(config)
        model.to(device)
        if prompts is not None:
            prompts.to(device)
        rows = (steps + 2) * config.batch_size
        split = CachedSplit(images[:rows], labels[:rows], device)
        augment = DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip),
                                scale=(config.augment.scale_min, 1.0))
        trainer = Trainer(model, build_objective(config, model, prompts), split, split,
                          augment, config)
        trainer.refresh(1)
        order, crops = trainer.epoch_inputs()
        groups = list(effective_batches(order, config.batch_size, 1))
        for group in groups[:2]:  # warm-up: allocator, cuBLAS handles, first launches
            trainer.train_step_on(group, crops)
        torch.cuda.synchronize(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for group in groups[2:2 + steps]:
                    trainer.train_step_on(group, crops)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize(device)
        count = sum("synchroniz" in str(w.message) for w in caught) / steps
        report.syncs[method] = count
        report.checks.append(Check(f"train_{method}: no host sync in a steady step",
                                   count == 0, f"{count:g} per step"))
        del model, trainer, split
        torch.cuda.empty_cache()


def _only_epoch_speed(ws: Workspace) -> str:
    """The throughput of a one-epoch CLIP run, for a check's detail."""
    return f", {read_run(ws.root / 'logs' / 'clip')['mean_images_per_s']:,.0f} img/s " \
        "(its only epoch: compile included)"


def data_parallel(ws: Workspace, params: dict, processes: int, report: Report) -> None:
    """The CLIP stage under torchrun, compiled as the recipe is: one process (a group of one,
    so DistributedDataParallel wraps the compiled tower on any machine) or 2 GPUs (NCCL)."""
    if processes > 1 and torch.cuda.device_count() < processes:
        return
    run_params = copy.deepcopy(params)
    run_params["train_clip"].update(nprocs=processes, epochs=1)
    path = ws.write_params(run_params, f"params-ddp{processes}.yaml")
    # One process: torchrun by hand, as on a cluster; two: the stage relaunches itself
    # (nprocs), through harclip's quiet torchrun (harclip.runtime.torchrun), as `dvc repro` does.
    launcher = ("torch.distributed.run", "--standalone", "--nproc-per-node=1", "-m") \
        if processes == 1 else ()
    code, seconds = ws.run(*launcher, "harclip.train", "clip", "--params", path.name)
    processes_text = f"{processes} process{'es' if processes > 1 else ''}"
    wrapped = f"× {processes_text} (data-parallel)" in ws.log.read_text()
    backend = "NCCL" if torch.cuda.is_available() else "gloo"
    speed = _only_epoch_speed(ws) if code == 0 else ""
    report.checks.append(Check(
        f"train_clip under DistributedDataParallel, {processes_text} ({backend})",
        code == 0 and wrapped, f"exit status {code} in {seconds:.0f} s{speed}"
        + ("" if wrapped else "; no data-parallel line in the log")))


def tuning_tools(ws: Workspace, params: dict, report: Report) -> None:
    """The CLIP stage with LoRA adapters, the weights' EMA, layer decay and gradient
    checkpointing at once, compiled as the recipe compiles: peft's adapters under
    torch.compile had not run on a GPU."""
    run_params = copy.deepcopy(params)
    run_params["train_clip"].update(epochs=1, tune="lora", ema_decay=0.99, layer_decay=0.75,
                                    grad_checkpointing=True)
    path = ws.write_params(run_params, "params-tools.yaml")
    code, seconds = ws.run("harclip.train", "clip", "--params", path.name)
    speed = _only_epoch_speed(ws) if code == 0 else ""
    report.checks.append(Check("train_clip with LoRA, EMA, layer decay and checkpointing",
                               code == 0, f"exit status {code} in {seconds:.0f} s{speed}"))


def target_met(method: str, row: dict) -> str:
    """The one-H100 target, met or missed (a benchmark figure, not a check)."""
    steps = row["har_epoch_s"] - row["refresh_s"]
    met = steps <= TARGETS_S[method] and \
        (method != "aclip" or row["refresh_s"] <= REFRESH_TARGET_S)
    goal = f"≤ {TARGETS_S[method]} s" + (f", refresh ≤ {REFRESH_TARGET_S} s"
                                         if method == "aclip" else "")
    return f"{'met' if met else 'missed'} ({goal})"


def run_phases(phases: list[tuple[str, Callable[[], None]]], ws: Workspace,
               report: Report) -> None:
    """Each phase in turn, the report written after each: a phase that raises or runs out
    of time is a failed check; once the budget is spent the rest are reported as not run."""
    for name, phase in phases:
        if ws.deadline - time.perf_counter() < MIN_PHASE_S:
            report.checks.append(Check(name, False, "not run: the time budget was spent"))
        else:
            try:
                phase()
            except PhaseTimeout as err:
                report.checks.append(Check(name, False, str(err)))
            except Exception as err:  # a check reports what broke and goes on
                report.checks.append(Check(name, False, f"{type(err).__name__}: {err}"))
        report.write()


def main() -> int:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started as a background job:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the Ctrl-C check needs it
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("out", type=Path, help="folder for gpu_check.json, .md and .log")
    cli.add_argument("--small", action="store_true",
                     help="tiny models, 64 px, 320 images, no compile: a CPU in minutes")
    cli.add_argument("--pretrained", action="store_true",
                     help="keep the recipe's pretrained tags (weights must be cached locally)")
    cli.add_argument("--device", default="auto")
    cli.add_argument("--budget-s", type=float, default=340.0,
                     help="no phase starts after this many seconds, and none runs past them "
                          "(default %(default)s)")
    args = cli.parse_args()
    configure_logging()
    device = resolve_device(args.device)
    train_images, val_images, size = (256, 64, 64) if args.small else (HAR_TRAIN, HAR_VAL, 224)
    params = check_params(args.small, args.pretrained, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    log.write_text("")
    report = Report(args.out, {"hardware": describe(), "device": str(device),
                               "torch": torch.__version__, "small": args.small,
                               "budget_s": args.budget_s, "train_images": train_images,
                               "val_images": val_images, "image_size": size})

    def stop(signum, _frame):
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    with tempfile.TemporaryDirectory(prefix="harclip-gpu-check-") as folder:
        ws = Workspace(Path(folder), log, report.started + args.budget_s)
        cache = ws.root / "data" / "cache"
        ws.write_params(params)
        phases = [("synthetic cache", lambda: build_cache(cache, train_images, val_images,
                                                          size))]
        phases += [(f"train_{m}", lambda m=m: train_stage(ws, m, report)) for m in METHODS]
        # DDP over a group of one right after CLIP's run (it overwrites CLIP's logs, read
        # by then): what the first GPU run most needs checked comes before the budget ends.
        phases.insert(2, ("DistributedDataParallel, one process",
                          lambda: data_parallel(ws, params, 1, report)))
        phases += [("host syncs per step",
                    lambda: syncs_per_step(params, cache, device, report)),
                   ("evaluate and predict", lambda: evaluate_and_predict(ws, device, report)),
                   ("NCCL, 2 GPUs", lambda: data_parallel(ws, params, 2, report)),
                   ("fine-tuning tools", lambda: tuning_tools(ws, params, report))]
        try:
            run_phases(phases, ws, report)
        except (Stopped, KeyboardInterrupt) as err:
            ws.kill()
            report.checks.append(Check("the whole check", False,
                                       f"stopped by {err or 'Ctrl-C'}; the report holds the "
                                       f"phases done"))
            report.write()
            print(f"gpu_check: stopped; partial report in {args.out}", file=sys.stderr)
            return 143 if isinstance(err, Stopped) else 130
    for method, row in report.figures.items():
        if device.type == "cuda" and not args.small:
            row["target"] = target_met(method, row)
    print(report.write())
    return 0 if all(c.passed for c in report.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
