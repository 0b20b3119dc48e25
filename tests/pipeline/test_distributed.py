"""Data parallelism on CPU with gloo: two processes follow the one-process trajectory, and only
rank 0 writes.

Tolerance: per-epoch losses within 1e-4 relative, accuracies and learning rate equal (to the
logs' 6 decimals). Measured: equal to 6 decimals but for ±1e-6 on a few losses (the gradient
all-reduce sums in another order).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from harclip.config.params import load_params
from harclip.data.cache import CacheItem, cache_classes, load_split, write_cache
from harclip.data.records import read_run
from harclip.train import stage as train_stage
from tests.support import REPO_ROOT
from tests.support.params import repo_params
from tests.support.runs import epoch_rows, saved_epochs

pytestmark = pytest.mark.slow


TRAIN_IMAGES = 192  # 12 steps of 16: no short last step, which N processes trim to N's multiple


@pytest.fixture(scope="module")
def even_cache(small_cache, tmp_path_factory) -> Path:
    """The small cache's first TRAIN_IMAGES train images (repeated where it has fewer) and its
    val split."""
    cache = tmp_path_factory.mktemp("even") / "cache"
    items, split_of = [], []
    for index, split in enumerate(("train", "val")):
        images, labels = load_split(small_cache, split)
        rows = np.resize(np.arange(len(labels)), TRAIN_IMAGES) if split == "train" \
            else np.arange(len(labels))
        items += [CacheItem(f"{split}_{i}", int(labels[r]), f"{split}_{i}", images[r])
                  for i, r in enumerate(rows)]
        split_of += [index] * len(rows)
    write_cache(cache, items, np.array(split_of), cache_classes(small_cache),
                load_split(small_cache, "val")[0].shape[-1])
    return cache


def _config(method: str, **changes):
    config = replace(load_params(REPO_ROOT / "params.yaml").train(method),
                     **{"epochs": 2, "batch_size": 16, "device": "cpu", "log_every": 1000,
                        **changes})
    if method == "sglip":  # exercise the sigmoid image–text term across processes too
        config = replace(config, contrastive_weight=0.5)
    return config


def _rank(rank: int, port: int, method: str, config, cache: Path, out: Path) -> None:
    """One process of a 2-process run, set up as torchrun would; each rank gets its own
    output folders, so anything a rank other than 0 writes would show."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    torch.set_num_threads(1)
    root = out / f"rank{rank}"
    train_stage.run(method, config, cache, root / "models", root / "logs", root / "resume")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _assert_same_trajectory(single_logs, parallel_logs):
    """Two epochs of the same losses (to float tolerance), accuracies and lr."""
    single, parallel = epoch_rows(single_logs), epoch_rows(parallel_logs)
    assert len(single) == len(parallel) == 2
    for one, two in zip(single, parallel, strict=True):
        for key in ("train_loss", "val_loss"):
            assert float(two[key]) == pytest.approx(float(one[key]), rel=1e-4), key
        for key in ("train_acc", "val_acc", "lr"):
            assert two[key] == one[key], key


@pytest.mark.parametrize("method", ["sglip", "aclip"])  # CLIP's path is A-CLIP's unmasked
def test_two_gloo_processes_follow_the_single_process_trajectory(even_cache, tmp_path,
                                                                 method):
    torch.set_num_threads(1)
    alone = tmp_path / "alone"
    train_stage.run(method, _config(method), even_cache, alone / "models", alone / "logs",
                    alone / "resume")
    mp.spawn(_rank, args=(_free_port(), method, _config(method, nprocs=2), even_cache,
                          tmp_path), nprocs=2)

    _assert_same_trajectory(alone / "logs" / method, tmp_path / "rank0" / "logs" / method)
    written = {p.relative_to(tmp_path / "rank0").as_posix()
               for p in (tmp_path / "rank0").rglob("*") if p.is_file()
               and "/plots/" not in p.as_posix()}  # DVCLive's series: one file each
    assert written == {f"models/{method}.pt", f"logs/{method}/metrics.json",
                       f"logs/{method}/params.yaml", f"logs/{method}/train.log",
                       f"logs/{method}/run.json",
                       f"resume/{method}.lock"}  # the run's lock, held by rank 0
    assert not [p for p in (tmp_path / "rank1").rglob("*") if p.is_file()]


def test_nprocs_in_params_relaunches_the_stage_under_torchrun(small_cache, tmp_path):
    params = repo_params()
    params["train_clip"].update(epochs=2, batch_size=16, device="cpu", nprocs=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "harclip.train", "clip", "--cache",
                             str(small_cache)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert "launching 2 processes with torchrun" in result.stderr
    assert "on cpu × 2 processes" in result.stderr
    # Rank 0 alone logs: each epoch once on the console and in the log file.
    for text in (result.stderr, (tmp_path / "logs/clip/train.log").read_text()):
        assert text.count("clip epoch 1:") == 1 and text.count("clip epoch 2:") == 1
    assert read_run(tmp_path / "logs/clip")["processes"] == 2
    assert (tmp_path / "models/clip.pt").is_file()
    assert not (tmp_path / ".harclip/resume/clip").exists()


def test_a_failing_run_under_torchrun_ends_in_its_workers_one_line_errors(small_cache,
                                                                          tmp_path):
    params = repo_params()
    params["train_clip"].update(nprocs=2, device="cpu", pretrained="missing/start.pt")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "harclip.train", "clip", "--cache",
                             str(small_cache)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 2  # the workers' StageError status, not torchrun's 1
    assert "missing/start.pt: pretrained checkpoint file not found" in result.stderr
    assert "Traceback" not in result.stderr and "ChildFailedError" not in result.stderr
    assert "closing signal" not in result.stderr  # the agent's warnings stay quiet


def test_a_killed_two_process_run_resumes_on_the_single_process_trajectory(even_cache,
                                                                           tmp_path):
    torch.set_num_threads(1)
    alone = tmp_path / "alone"
    train_stage.run("clip", _config("clip", epochs=3), even_cache, alone / "models",
                    alone / "logs", alone / "resume")
    params = repo_params()
    params["train_clip"].update(epochs=3, batch_size=16, device="cpu", nprocs=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "harclip.train", "clip", "--cache", str(even_cache)]
    state = tmp_path / ".harclip/resume/clip/state.pt"

    launcher = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    while saved_epochs(state) < 1:
        assert launcher.poll() is None, launcher.stderr.read()
        time.sleep(0.05)
    # A lost machine: torchrun and both training processes (each in its own session) die.
    torchrun = psutil.Process(launcher.pid)
    for process in [torchrun, *torchrun.children(recursive=True)]:
        process.send_signal(signal.SIGKILL)
    launcher.communicate(timeout=60)
    killed_at = saved_epochs(state)
    assert 1 <= killed_at < 3

    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(f"resuming after epoch {killed_at}") == 1  # rank 0 alone
    single = epoch_rows(alone / "logs/clip")
    resumed = epoch_rows(tmp_path / "logs/clip")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for one, two in zip(single, resumed, strict=True):
        assert float(two["train_loss"]) == pytest.approx(float(one["train_loss"]), rel=1e-4)
        assert two["val_acc"] == one["val_acc"]


def _signal_tree(pid: int, signum: int = signal.SIGKILL) -> None:
    """Signal a process and every process under it (torchrun's workers run in sessions of
    their own)."""
    try:
        process = psutil.Process(pid)
        for each in [process, *process.children(recursive=True)]:
            each.send_signal(signum)
    except psutil.NoSuchProcess:
        pass


@pytest.fixture
def two_machines(even_cache, tmp_path):
    """Start docs/training.md's multi-node command on two "machines" of one process each
    (gloo) on 127.0.0.1: machine 0's torchrun holds the rendezvous (the endpoint is its
    address) and starts first, as a cluster's does. Each machine works in a folder of its own
    (params and outputs; the cache is shared), its output in `machine<N>.out`. Whatever still
    runs after the test is killed."""
    machines = []

    def start(epochs: int, **env: str) -> list[subprocess.Popen]:
        params = repo_params()
        params["train_sglip"].update(epochs=epochs, batch_size=16, device="cpu",
                                     log_every=1000, contrastive_weight=0.5)  # _config's
        endpoint = ("127.0.0.1", _free_port())
        for rank in range(2):
            folder = tmp_path / f"machine{rank}"
            folder.mkdir()
            (folder / "params.yaml").write_text(yaml.safe_dump(params))
            command = [sys.executable, "-m", "harclip.runtime.torchrun", "--nnodes", "2",
                       "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                       "--rdzv-endpoint", "{}:{}".format(*endpoint),
                       "-m", "harclip.train", "sglip", "--cache", str(even_cache)]
            with open(tmp_path / f"machine{rank}.out", "w") as out:
                machines.append(subprocess.Popen(
                    command, cwd=folder, stdout=out, stderr=subprocess.STDOUT,
                    env={**os.environ, "OMP_NUM_THREADS": "1", **env}))
            while rank == 0 and machines[0].poll() is None:  # until its rendezvous is up
                with socket.socket() as probe:
                    if probe.connect_ex(endpoint) == 0:
                        break
                time.sleep(0.1)
        return machines

    yield start
    for machine in machines:
        if machine.poll() is None:
            _signal_tree(machine.pid)
        machine.wait()


def _output(root: Path, rank: int) -> str:
    return (root / f"machine{rank}.out").read_text()


def test_torchrun_on_two_machines_follows_the_single_process_trajectory(even_cache,
                                                                         two_machines,
                                                                         tmp_path):
    torch.set_num_threads(1)
    alone = tmp_path / "alone"
    train_stage.run("sglip", _config("sglip"), even_cache, alone / "models", alone / "logs",
                    alone / "resume")
    machines = two_machines(epochs=2)
    for rank, machine in enumerate(machines):
        assert machine.wait(timeout=600) == 0, _output(tmp_path, rank)

    # Rank 0 is the machine whose torchrun sorts first in the rendezvous (machine 0 here, as
    # it started first); it alone writes and logs.
    first, other = sorted((tmp_path / f"machine{rank}" for rank in range(2)),
                          key=lambda folder: not (folder / "models").exists())
    assert "on cpu × 2 processes (data-parallel)" in _output(tmp_path, int(first.name[-1]))
    assert "sglip epoch" not in _output(tmp_path, int(other.name[-1]))
    _assert_same_trajectory(alone / "logs/sglip", first / "logs/sglip")
    written = {p.relative_to(first).as_posix() for p in first.rglob("*")
               if p.is_file() and "/plots/" not in p.as_posix()}
    assert written == {"params.yaml", "models/sglip.pt", "logs/sglip/metrics.json",
                       "logs/sglip/params.yaml", "logs/sglip/train.log",
                       "logs/sglip/run.json", ".harclip/resume/sglip.lock"}
    assert [p.name for p in other.rglob("*") if p.is_file()] == ["params.yaml"]


LOST_MACHINE_S = 120
"""How long the machine left may take to end its run once the other is gone."""
SILENCE_S = 30
"""HARCLIP_DIST_TIMEOUT_S in these runs: a stopped machine's silence ends the run after it (a
killed one's closed connections, at once); above any wait of a live run of theirs."""


@pytest.mark.parametrize("lost, how", [(1, signal.SIGKILL), (0, signal.SIGKILL),
                                       (1, signal.SIGSTOP)],
                         ids=["machine 1 killed", "machine 0 (the rendezvous) killed",
                              "machine 1 silent"])
def test_a_machine_that_dies_ends_the_run_on_the_other_in_one_line(two_machines, tmp_path,
                                                                   lost, how):
    machines = two_machines(epochs=50, HARCLIP_DIST_TIMEOUT_S=str(SILENCE_S))
    while not any("sglip epoch 1:" in _output(tmp_path, rank) for rank in range(2)):
        for rank, machine in enumerate(machines):
            assert machine.poll() is None, _output(tmp_path, rank)
        time.sleep(0.1)
    _signal_tree(machines[lost].pid, how)  # the machine's torchrun and its worker
    left = 1 - lost
    try:
        code = machines[left].wait(timeout=LOST_MACHINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"machine {left} still runs {LOST_MACHINE_S} s after machine {lost} "
                    f"was lost:\n{_output(tmp_path, left)}")

    output = _output(tmp_path, left)
    # Nothing but harclip's own lines: no traceback, torchrun report or C++ store log.
    assert all(re.match(r"\d\d:\d\d:\d\d harclip ", line) for line in output.splitlines()), \
        output
    errors = [line.split(" harclip error: ")[1] for line in output.splitlines()
              if " harclip error: " in line]
    lost_contact = "lost contact with another training process ("
    if lost == 1:
        assert code == 2, output  # the worker's status
        assert len(errors) == 1 and errors[0].startswith(lost_contact), output
        assert ("Timed out" in errors[0]) == (how == signal.SIGSTOP), output
        assert f"within HARCLIP_DIST_TIMEOUT_S ({SILENCE_S} s)" in errors[0]
    else:  # torchrun lost its rendezvous too, and says so after its worker
        assert code == 1, output
        assert errors[-1].startswith("torchrun lost its rendezvous at 127.0.0.1:"), output
        assert all(line.startswith(lost_contact) for line in errors[:-1]), output
    assert all("rerun the command on every machine to resume" in line for line in errors)
    assert "sglip epoch 50:" not in output
