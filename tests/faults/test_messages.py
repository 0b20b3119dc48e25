"""Messages that must say what happened and what to do: a disk that fills while download
copies, the free-space check's margin, a lock whose holder has not yet written its name, and
the command that restores an edited cache under DVC."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections import namedtuple

import pytest

from harclip.data import cache as cache_module
from harclip.data.cache import load_split
from harclip.download import stage as dl
from harclip.preprocess import stage as pp
from harclip.runtime import files
from harclip.runtime.errors import StageError
from tests.support.dvc_project import DvcProject
from tests.support.images import class_folders, raw_folder
from tests.support.params import download_config, preprocess_config, tiny_params


def test_a_disk_that_fills_while_download_copies_is_one_line_and_keeps_data_raw(
        tmp_path, monkeypatch):
    source, raw = tmp_path / "har", tmp_path / "raw"
    class_folders(source, ("eating", "hugging"))
    raw.mkdir()
    (raw / "earlier.txt").write_text("the previous download")

    def full(*_args):  # what the kernel answers once the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "sendfile", full)  # shutil's copy goes through it on Linux
    with pytest.raises(StageError) as raised:
        dl.download(download_config(source="folder", path=str(source)), raw)
    assert str(raised.value) == (f"{raw}: the disk filled while copying the dataset; free "
                                 f"space and rerun (the previous {raw} is intact)")
    assert [p.name for p in raw.iterdir()] == ["earlier.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".raw.lock", "har", "raw"]


def test_the_free_space_check_counts_its_margin_in_what_it_says_is_needed(tmp_path,
                                                                          monkeypatch):
    raw, cache = tmp_path / "raw", tmp_path / "cache"
    raw_folder(raw, per_class=6)  # 18 images at 128 px: under 1 MB
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage",
                        lambda _path: usage(10**9, 10**9, 5 * 2**20))
    with pytest.raises(StageError, match=r"the cache needs 17 MB \(1 MB of images and 16 MB "
                                         r"kept free\) but only 5 MB are free there"):
        pp.preprocess(preprocess_config(image_size=128, workers=1), raw, cache)


def test_a_lock_whose_holder_has_not_written_its_name_yet_still_names_it(tmp_path):
    lock = tmp_path / ".cache.lock"
    holder = subprocess.Popen(  # takes the lock, then writes its name a moment later
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"handle = open({str(lock)!r}, 'a+')\n"
         "fcntl.flock(handle, fcntl.LOCK_EX)\n"
         "print('locked', flush=True)\n"
         "time.sleep(0.3)\n"
         "handle.write(f'pid {os.getpid()} on a host'); handle.flush()\n"
         "time.sleep(30)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        refused = rf"preprocess is already running \(pid {holder.pid} on a host; lock "
        with pytest.raises(StageError, match=refused), files.exclusive(lock, "preprocess"):
            pass
        assert time.monotonic() - started < files.HOLDER_NAME_WAIT_S + 2  # not the run's end
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.slow
def test_the_command_an_edited_cache_advises_restores_it_under_dvc(tmp_path):
    params = tiny_params()
    project = DvcProject(tmp_path, params)
    project.repro("preprocess")
    images = tmp_path / "data/cache/train_images.npy"
    images.write_bytes(images.read_bytes()[:1000])  # truncated by hand
    with pytest.raises(StageError) as raised:
        load_split(tmp_path / "data/cache", "train")
    advised = str(raised.value).split("(or `", 1)[1].split("`", 1)[0]
    assert advised.startswith("dvc checkout")
    assert subprocess.run(advised.split(), cwd=tmp_path, env=project.env,
                          capture_output=True).returncode == 0
    images_back, labels = load_split(tmp_path / "data/cache", "train")
    assert len(images_back) == len(labels) > 0
    assert project.changed_stages("preprocess") == set()
