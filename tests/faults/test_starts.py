"""A wrong `pretrained:`: a missing file stops `dvc repro` before DVC removes a training
stage's outputs, and a file that is not a start's weights (a pickle carrying code, a
truncated or random file, a fine-tuned harclip classifier) is one line; no payload runs."""

from __future__ import annotations

import os
import pickle
import shutil

import pytest
import torch
import yaml

from harclip.model.backbones import create_backbone
from harclip.runtime.errors import StageError
from tests.support import REPO_ROOT
from tests.support.cli import one_line_error, run_module
from tests.support.dvc_project import DvcProject
from tests.support.images import jpeg_bytes
from tests.support.params import tiny_training_params

SHIPPED = REPO_ROOT / "models/pretrained/harclip-tiny-clip.pt"


class Payload:
    """What a malicious file pickles: unpickling it would create `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_check_params_names_every_key_whose_file_is_missing_and_the_fix(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["train_sglip"]["pretrained"] = "weights/mine.pt"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = run_module("config", cwd=tmp_path)  # no models/pretrained here
    assert done.returncode == 2
    one_line_error(done.stderr, "train_clip.pretrained and train_aclip.pretrained = "
                   "models/pretrained/harclip-tiny-clip.pt; train_sglip.pretrained = "
                   "weights/mine.pt", "`git checkout models/pretrained`", "pretrained: null")
    shutil.copytree(REPO_ROOT / "models/pretrained", tmp_path / "models/pretrained")
    (tmp_path / "weights").mkdir()
    shutil.copy(REPO_ROOT / "models/pretrained/harclip-tiny-siglip.pt",
                tmp_path / "weights/mine.pt")
    assert run_module("config", cwd=tmp_path).returncode == 0


@pytest.mark.slow
def test_dvc_repro_without_the_starts_stops_before_removing_a_models_outputs(tmp_path):
    project = DvcProject(tmp_path, tiny_training_params())
    project.dvc("repro", "check_params", "train_clip")  # check_params in dvc.lock, unchanged
    project.commit("trained")
    kept = {path: path.read_bytes() for path in
            [tmp_path / "models/clip.pt", *(tmp_path / "logs/clip").rglob("*")]
            if path.is_file()}
    shutil.rmtree(tmp_path / "models/pretrained")
    with pytest.raises(AssertionError) as failed:
        project.dvc("repro")
    ours = str(failed.value).split("Running stage 'check_params'")[1]
    one_line_error(ours.split("ERROR: failed to reproduce 'check_params'")[0],
                   "no such pretrained file", "git checkout models/pretrained")
    assert "Running stage 'train_clip'" not in str(failed.value)
    assert {path: path.read_bytes() for path in kept if path.is_file()} == kept


@pytest.mark.parametrize("write, expected", [
    (lambda path: path.write_bytes(pickle.dumps(Payload(path.with_suffix(".ran")))),
     "not a readable weights file: torch's data-only loader refuses it"),
    (lambda path: torch.save({"state_dict": Payload(path.with_suffix(".ran"))}, path),
     "not a weights file: it holds Python objects (code)"),
    (lambda path: path.write_bytes(SHIPPED.read_bytes()[:5000]),
     "not a readable weights file"),
    (lambda path: path.write_bytes(os.urandom(4000)), "not a readable weights file"),
    (lambda path: torch.save({"format": "harclip-classifier", "state_dict": {}}, path),
     "a fine-tuned harclip checkpoint, not a pretrained start: use `python -m "
     "harclip.predict --model"),
    (lambda path: torch.save({"epoch": 3}, path),
     "not a weights file (expected a state dict of tensors"),
    (lambda path: shutil.copy(REPO_ROOT / "models/pretrained/harclip-tiny-siglip.pt", path),
     "its weights do not fit harclip-tiny-clip ("),
])
def test_a_file_that_is_not_a_starts_weights_is_one_line_and_runs_no_code(
        tmp_path, recwarn, write, expected):
    start = tmp_path / "start.pt"
    write(start)
    with pytest.raises(StageError) as raised:
        create_backbone("harclip-tiny-clip", str(start), image_size=32)
    assert str(raised.value).startswith(f"{start}: {expected}")
    assert "\n" not in str(raised.value)
    assert not start.with_suffix(".ran").exists()  # the payload never ran
    assert not [w for w in recwarn if "please file an issue" in str(w.message)]


def test_a_truncated_safetensors_start_is_one_line_that_does_not_blame_the_architecture(
        tmp_path):
    from safetensors.torch import save_file

    start = tmp_path / "start.safetensors"
    state = torch.load(SHIPPED, weights_only=True)["state_dict"]
    save_file(state, start)
    start.write_bytes(start.read_bytes()[:5000])
    with pytest.raises(StageError) as raised:
        create_backbone("harclip-tiny-clip", str(start), image_size=32)
    assert str(raised.value).startswith(f"{start}: open_clip cannot read it as "
                                        f"harclip-tiny-clip's weights (")
    assert "\n" not in str(raised.value)


def test_predict_on_a_pickle_carrying_code_says_one_line_and_no_torch_warning(tmp_path):
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Payload(tmp_path / "ran")))
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes(0))
    done = run_module("predict", "--model", "evil.pt", "photo.jpg", cwd=tmp_path)
    assert done.returncode == 2 and not (tmp_path / "ran").exists()
    one_line_error(done.stderr, "evil.pt: not a readable harclip checkpoint")
    assert done.stderr.count("\n") == 1, done.stderr  # torch's "please file an issue" too
