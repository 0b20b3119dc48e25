"""What users and machines do to a pipeline: full disks, hard kills, orphans, two runs at once,
odd CSVs, truncated caches, decompression bombs, paths out of the dataset, params mistakes.
Each ends in one line that names the file and what to do, and nothing already written is
lost."""

from __future__ import annotations

import argparse
import errno
import io
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections import namedtuple
from dataclasses import asdict

import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image

from harclip.config.params import load_params
from harclip.data import cache as cache_module
from harclip.data.cache import CacheItem, load_split, write_cache
from harclip.data.layout import CLASS_NAMES, read_labels_csv, write_labels_csv
from harclip.download import stage as dl
from harclip.model.checkpoints import load_checkpoint, save_checkpoint
from harclip.model.classifier import build_model
from harclip.predict.classify import classify
from harclip.preprocess import stage as pp
from harclip.runtime import files, harness
from harclip.runtime.errors import ConfigError, StageError
from tests.support import REPO_ROOT
from tests.support.cli import one_line_error
from tests.support.dvc_project import BIN, DvcProject
from tests.support.images import jpeg_bytes, raw_folder, rejections
from tests.support.params import (
    download_config,
    preprocess_config,
    repo_params,
    tiny_params,
    train_config,
)
from tests.support.runs import Stage, aclip_stage_params, saved_epochs

SIZE = 16


def _python(*args, cwd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          **kwargs)


def _cache(root, n=12):
    rng = np.random.default_rng(0)
    items = [CacheItem(f"{i}", i % 3, f"{i}", rng.integers(0, 256, (3, SIZE, SIZE),
                                                           dtype=np.uint8)) for i in range(n)]
    write_cache(root, items, np.array([0, 1] * (n // 2)), ["a", "b", "c"], SIZE)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_cache_that_does_not_fit_fails_before_writing_and_keeps_the_old_one(tmp_path,
                                                                              monkeypatch):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    raw_folder(raw, per_class=6)
    cache.mkdir()
    (cache / "train_images.npy").write_text("earlier cache")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda _path: usage(10**9, 10**9, 10**6))
    refusal = r"cache needs \d+ MB \(.* kept free\) but only 0 MB are free"
    with pytest.raises(StageError, match=refusal):
        pp.preprocess(preprocess_config(image_size=256, workers=1), raw, cache)
    assert (cache / "train_images.npy").read_text() == "earlier cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.lock", "cache", "raw"]


def test_a_full_disk_anywhere_is_one_line_and_the_staging_folder_goes(tmp_path, monkeypatch):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    raw_folder(raw, per_class=6)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module.CacheWriter, "add", full)
    with pytest.raises(OSError) as raised:
        pp.preprocess(preprocess_config(image_size=SIZE, workers=1), raw, cache)
    assert raised.value.filename == str(cache)  # the message names the folder
    assert harness._one_line(raised.value).startswith(f"no space left on the device ({cache})")
    # no staging folder left (.cache.lock keeps one run at a time)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.lock", "raw"]


def test_enospc_from_a_stage_command_is_one_line(tmp_path):
    script = ("import errno; from harclip.runtime import harness\n"
              "def main():\n"
              "    raise OSError(errno.ENOSPC, 'No space left on device', 'models/clip.pt')\n"
              "harness.run(main)\n")
    result = _python("-c", script, cwd=tmp_path)
    assert result.returncode == 2
    one_line_error(result.stderr, "no space left on the device (models/clip.pt)",
                    "free some space")


def test_stale_staging_folders_of_dead_runs_are_removed_and_ignored(tmp_path):
    data = tmp_path / "data"
    dead = next(pid for pid in range(max(psutil.pids()) + 1000, 10**7)
                if not psutil.pid_exists(pid))
    (data / f".cache.{dead}.abc").mkdir(parents=True)
    (data / ".cache.legacy").mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = data / f".cache.{sleeper.pid}.xyz"
        live.mkdir()
        with files.atomic_directory(data / "cache") as staging:
            (staging / "x").write_text("new")
        assert sorted(p.name for p in data.iterdir()) == sorted(["cache", live.name])
    finally:
        sleeper.kill()
        sleeper.wait()
    for pattern in ("data/.cache.123.abc/x", "data/.raw.123.abc/x"):
        assert subprocess.run(["git", "check-ignore", "-q", pattern], cwd=REPO_ROOT).returncode \
            == 0
    ignored = (REPO_ROOT / ".dvcignore").read_text().splitlines()
    assert {"data/.raw.*", "data/.cache.*"} <= set(ignored)


def test_sigkill_of_preprocess_leaves_no_worker_behind(tmp_path):
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("RGB", (300, 200), (30, 90, 200)).save(buffer, format="JPEG")
    # Fast to decode: results are on their way to the stage when it dies (each worker
    # printed a BrokenPipeError traceback of 17 lines before they kept quiet)
    rows = [(f"{i}.jpg", CLASS_NAMES[i % 3]) for i in range(4000)]
    for name, _ in rows:
        (raw / "train" / name).write_bytes(buffer.getvalue())
    write_labels_csv(raw / "Training_set.csv", rows)
    params = repo_params()
    params["preprocess"].update(workers=2, image_size=256)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    errors = tmp_path / "stderr.txt"
    process = subprocess.Popen([sys.executable, "-m", "harclip.preprocess", "--raw", str(raw),
                                "--out", str(tmp_path / "cache")], cwd=tmp_path,
                               stderr=errors.open("w"))
    parent = psutil.Process(process.pid)
    deadline = time.monotonic() + 60
    while len(parent.children()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = parent.children()
    assert len(workers) >= 2
    time.sleep(0.3)
    process.kill()
    process.wait()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned decode workers: {alive}"
    lines = errors.read_text().splitlines()  # the stage's and its workers' stderr
    assert "Traceback" not in errors.read_text()
    assert len([line for line in lines if "decoding worker" in line]) <= len(workers)
    assert len(lines) <= 2 + len(workers)  # the stage's own lines, one per worker


def test_sigterm_stops_a_training_stage_cleanly_and_it_resumes(small_cache, tmp_path):

    run = Stage(tmp_path / "run", small_cache, aclip_stage_params())
    stderr = run.stop_after(1, signal.SIGTERM)
    stops = [line for line in stderr.splitlines() if "interrupted" in line or "rerun" in line]
    assert len(stops) == 1 and "interrupted (SIGTERM); aclip: rerun to resume" in stops[0]
    assert "Traceback" not in stderr
    assert saved_epochs(run.state) >= 1
    assert "resuming after epoch" in run.finish()


RESUME = ("clip: rerun to resume after the last saved epoch (every resume_every = 1; state in "
          ".harclip/resume/clip)")


@pytest.mark.slow
@pytest.mark.parametrize(("whom", "sig", "streamed"),
                         [("dvc", signal.SIGTERM, False), ("dvc", signal.SIGKILL, False),
                          ("group", signal.SIGTERM, False), ("group", signal.SIGINT, False),
                          ("group", signal.SIGTERM, True)],
                         ids=["SIGTERM-dvc", "SIGKILL-dvc", "SIGTERM-group", "Ctrl-C",
                              "SIGTERM-group-streamed"])
def test_a_signal_to_dvc_repro_stops_the_stage_it_runs_with_one_line(tmp_path, whom, sig,
                                                                     streamed):
    """README's rows: the dvc process alone killed, the whole process group stopped (timeout,
    SLURM, Kubernetes), Ctrl-C in a terminal; and the group stopped while DataLoader workers
    stream the cache (they are in the group too)."""
    params = tiny_params()
    params["download"]["synthetic"].update(images_per_class=16, shifted_images_per_class=0,
                                           image_size=64)
    params["preprocess"]["image_size"] = 64
    params["train_clip"].update(epochs=50, batch_size=16, device="cpu",
                                cache_in_memory=not streamed)
    project = DvcProject(tmp_path, params)
    project.repro("preprocess")
    output = tmp_path / "repro.log"
    with open(output, "w") as log_file:
        dvc = subprocess.Popen([str(BIN / "dvc"), "repro", "train_clip"], cwd=tmp_path,
                               env=project.env, stdout=log_file, stderr=subprocess.STDOUT,
                               start_new_session=True)
    state = tmp_path / ".harclip/resume/clip/state.pt"
    while not state.is_file():
        assert dvc.poll() is None
        time.sleep(0.1)
    everyone = psutil.Process(dvc.pid).children(recursive=True)  # with the loader's workers
    training = [p for p in everyone if "harclip.train" in " ".join(p.cmdline())]
    assert training and (len(everyone) > len(training) + 1) == streamed  # sh, stage[, workers]
    if whom == "dvc":
        dvc.send_signal(sig)
    else:
        os.killpg(dvc.pid, sig)
    dvc.wait(timeout=60)
    _, alive = psutil.wait_procs(everyone, timeout=15)
    assert not alive, f"{alive} outlived the dvc process that ran them"
    assert state.is_file()  # what it had done is kept for the next run
    lines = output.read_text().splitlines()
    started = next(i for i, line in enumerate(lines) if "clip: harclip-tiny-clip" in line)
    said = [line for line in lines[started + 1:] if not re.search(r" epoch \d+: ", line)]
    expected = {"dvc": f"stopped: the dvc process that started this stage ({dvc.pid}) is "
                       f"gone (killed or stopped); {RESUME}",
                "group": f"interrupted (SIGTERM); {RESUME}" if sig == signal.SIGTERM else
                         f"interrupted; {RESUME}"}[whom]
    assert said[0].endswith(expected), lines
    if whom == "group" and sig == signal.SIGTERM:  # README's "exit 143", as a shell shows it
        assert dvc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), dvc.returncode
    if sig != signal.SIGINT:
        assert said[1:] == [], lines
        return
    # DVC's own line: the stage exits 130, but where SHELL is unset DVC runs it under dash, which
    # dies of the SIGINT itself (-2); bash execs the stage, so DVC sees the 130.
    assert len(said) == 2, lines
    assert re.fullmatch(r"ERROR: failed to reproduce 'train_clip': failed to run: PYTHONPATH=src:"
                        r"\$PYTHONPATH python -m harclip.train clip, exited with (130|-2)",
                        said[1]), lines


def test_a_second_live_run_of_one_model_is_refused_and_a_dead_ones_lock_taken_over(
        small_cache, tmp_path):

    run = Stage(tmp_path / "run", small_cache, aclip_stage_params(epochs=40))
    first = run.start()
    lock = run.root / ".harclip/resume/aclip.lock"
    while not (lock.is_file() and lock.read_text().strip()):
        assert first.poll() is None
        time.sleep(0.05)
    second = run.start()
    _, stderr = second.communicate(timeout=120)
    assert second.returncode == 2
    one_line_error(stderr, f"train_aclip is already running (pid {first.pid} on ",
                    "wait for it")
    first.kill()
    first.wait()
    third = run.start()
    try:
        deadline = time.monotonic() + 120
        while "taking over the lock" not in (lock.read_text() + third.stderr.readline()):
            assert third.poll() is None and time.monotonic() < deadline
    finally:
        third.kill()
        third.communicate()


def test_csv_with_a_bom_another_case_or_another_encoding(tmp_path):
    path = tmp_path / "Training_set.csv"
    path.write_bytes("\ufeffFilename,Label\r\na.jpg,calling\r\n".encode())
    assert [(r.filename, r.label) for r in read_labels_csv(path)] == [("a.jpg", "calling")]
    path.write_bytes("filename,label\nbébé.jpg,calling\n".encode("latin-1"))
    with pytest.raises(StageError, match=r"Training_set.csv: not UTF-8 text .*save it as UTF-8"):
        read_labels_csv(path)
    path.write_text("file,class\na.jpg,calling\n")
    with pytest.raises(StageError, match="expected a header with 'filename' and 'label'"):
        read_labels_csv(path)


def test_a_given_split_column_is_honoured(tmp_path):
    raw = tmp_path / "raw"
    rows = raw_folder(raw, per_class=6)
    sides = ["train", "train", "train", "val", "val", "test"] * 3
    write_labels_csv(raw / "Training_set.csv", [(*row, side) for row, side in zip(rows, sides,
                                                                                  strict=True)],
                     with_split=True)
    summary = pp.preprocess(preprocess_config(image_size=SIZE, workers=1), raw,
                            tmp_path / "cache")
    assert (summary["train_images"], summary["val_images"], summary["test_images"]) == (9, 6, 3)
    assert summary["split_source"] == "given"


def test_a_truncated_or_inconsistent_cache_is_an_error_not_a_wrong_accuracy(tmp_path):
    _cache(tmp_path / "cache")
    images = tmp_path / "cache" / "val_images.npy"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(StageError, match=r"cache: the val split is missing or truncated.*"
                                         r"dvc repro preprocess"):
        load_split(tmp_path / "cache", "val")
    _cache(tmp_path / "other")
    np.save(tmp_path / "other" / "train_labels.npy", np.zeros(4, dtype=np.int64))
    with pytest.raises(StageError, match=r"train_images.npy: .* 4 labels, where summary.json "
                                         r"says 6 images"):
        load_split(tmp_path / "other", "train")


def test_an_unsafe_zip_entry_is_skipped_with_one_line(tmp_path, caplog):
    with zipfile.ZipFile(tmp_path / "har.zip", "w") as archive:
        archive.writestr("HAR/Training_set.csv", "filename,label\nImage_1.jpg,sitting\n")
        archive.writestr("HAR/train/Image_1.jpg", jpeg_bytes(1))
        archive.writestr("HAR/train/..", b"not a file name")
    with caplog.at_level("WARNING", logger="harclip"):
        count = dl.download(download_config(source="kaggle", path=str(tmp_path / "har.zip")),
                            tmp_path / "raw")
    assert count == 1 and "skipped 1 entries" in caplog.text


def test_an_incomplete_checkpoint_names_what_it_lacks(tmp_path):
    model, _ = build_model(train_config())
    save_checkpoint(tmp_path / "m.pt", model, "harclip-tiny-clip", CLASS_NAMES, {})
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    del payload["class_names"], payload["mean"]
    torch.save(payload, tmp_path / "m.pt")
    with pytest.raises(StageError, match=r"m.pt: incomplete harclip checkpoint, no "
                                         r"class_names, mean"):
        load_checkpoint(tmp_path / "m.pt")


def test_predict_refuses_nonsense_counts_in_one_line(tmp_path):
    for text in ("-1", "0", "three"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected a whole number of at "
                                                             "least 1"):
            harness.positive_int(text)
    assert harness.positive_int("3") == 3
    result = _python("-m", "harclip.predict", "--model", "m.pt", "x.jpg", "--top-k", "-1",
                     cwd=tmp_path)  # the command line uses it: one line, no traceback
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "expected a whole number of at least 1" in result.stderr


def test_decompression_bombs_are_reported_not_fatal(tmp_path):
    bomb = _png(Image.new("1", (14_000, 14_000)))  # 196 M pixels in a few hundred KB
    assert len(bomb) < 1_000_000
    raw = tmp_path / "raw"
    rows = raw_folder(raw, per_class=6)
    (raw / "train" / "bomb.png").write_bytes(bomb)
    (raw / "train" / "big.png").write_bytes(_png(Image.new("RGB", (200, 100))))
    write_labels_csv(raw / "Training_set.csv", [*rows, ("bomb.png", "calling"),
                                                ("big.png", "calling")])
    pp.preprocess(preprocess_config(image_size=SIZE, workers=1, max_bad_fraction=0.2,
                                    max_image_pixels=10_000), raw, tmp_path / "cache")
    report = rejections(tmp_path / "cache")
    assert report["bomb.png"].startswith("too many pixels (")
    assert "200×100; more than preprocess.max_image_pixels = 10,000" in report["big.png"]
    model, _ = build_model(train_config())
    save_checkpoint(tmp_path / "m.pt", model, "harclip-tiny-clip", CLASS_NAMES,
                    {"params": asdict(train_config())})
    model, meta = load_checkpoint(tmp_path / "m.pt")
    predictions, skipped = classify(model, meta, [raw / "train" / "bomb.png",
                                                  raw / "train" / rows[0][0]])
    assert len(predictions) == 1 and skipped[0][1].startswith("too many pixels")


def test_rows_that_point_outside_the_dataset_are_reported(tmp_path):
    raw = tmp_path / "raw"
    rows = raw_folder(raw, per_class=6)
    (tmp_path / "secret.jpg").write_bytes(jpeg_bytes(7))
    os.symlink(tmp_path / "secret.jpg", raw / "train" / "link.jpg")
    write_labels_csv(raw / "Training_set.csv", [*rows, ("../../secret.jpg", "calling"),
                                                ("link.jpg", "calling")])
    pp.preprocess(preprocess_config(image_size=SIZE, workers=1, max_bad_fraction=0.2), raw,
                  tmp_path / "cache")
    kinds = rejections(tmp_path / "cache", "kind")
    assert kinds == {"../../secret.jpg": "outside_dataset", "link.jpg": "outside_dataset"}


def test_an_empty_or_section_less_params_file_is_an_error(tmp_path, small_cache):
    for text, word in (("", "empty"), ("# only a comment\n", "empty"),
                       ("train_clip:\n  epochs: 1\n", "incomplete")):
        (tmp_path / "params.yaml").write_text(text)
        with pytest.raises(ConfigError, match=f"params.yaml: {word}: missing section"):
            load_params(tmp_path / "params.yaml")
    # A stage run on it: one line, before any work.
    result = _python("-m", "harclip.train", "clip", "--cache", str(small_cache), cwd=tmp_path)
    assert result.returncode == 2
    one_line_error(result.stderr, "params.yaml: incomplete: missing section(s) download")
    assert not (tmp_path / "models").exists()
