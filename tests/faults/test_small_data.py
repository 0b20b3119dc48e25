"""Small and odd data sets as a new user brings them: a few images a class, one class, the
demo's phrases and templates left in. Each ends in one line that says what to change; no
class is called a typo where the data set is simply small."""

from __future__ import annotations

import pytest
import yaml

from harclip.data.layout import flag_small_classes
from harclip.download import stage as dl
from harclip.preprocess.stage import preprocess
from harclip.runtime.errors import StageError
from tests.support import REPO_ROOT
from tests.support.cli import one_line_error, run_module
from tests.support.images import class_folders
from tests.support.params import download_config, preprocess_config


def _params(tmp_path, **sections) -> str:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for dotted, value in sections.items():
        section, key = dotted.split("__")
        params[section][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return "params.yaml"


@pytest.mark.parametrize(("counts", "typos"), [
    ({"a": 5, **{f"c{i}": 4 for i in range(14)}}, []),  # 5 against a median of 4: none
    ({"a": 1, "b": 4, "c": 4, "d": 5}, []),  # a median of 4 says nothing
    ({"typo": 1, **{f"c{i}": 20 for i in range(3)}}, ["typo"]),  # HAR-like: the one typo
    ({"few": 9, "b": 20, "c": 20, "d": 21}, []),  # above half the median: just smaller
])
def test_only_a_class_far_below_a_meaningful_median_is_called_a_typo(counts, typos):
    files = {name: [f"{name}_{i}.jpg" for i in range(n)] for name, n in counts.items()}
    assert flag_small_classes(files, "preprocess", minimum=6) == typos


def test_a_set_of_four_or_five_images_a_class_is_one_line_with_the_two_ways_out(tmp_path):
    params = _params(tmp_path, download__source="synthetic",
                     preprocess__workers=1)
    params_data = yaml.safe_load((tmp_path / params).read_text())
    params_data["download"]["synthetic"].update(images_per_class=5, shifted_images_per_class=0)
    (tmp_path / params).write_text(yaml.safe_dump(params_data, sort_keys=False))
    downloaded = run_module("download", "--params", params, cwd=tmp_path)
    assert downloaded.returncode == 0, downloaded.stderr
    assert downloaded.stderr.count("\n") == 1 and "download: 75 images of 15 classes" in \
        downloaded.stderr, downloaded.stderr  # its one line, no warning
    done = run_module("preprocess", "--params", params, cwd=tmp_path)
    assert done.returncode == 2 and "mistyped" not in done.stderr, done.stderr
    one_line_error(done.stderr, "15 of 15 classes have fewer than 6 images, the fewest "
                   "preprocess keeps a class with (one image in each split at "
                   "preprocess.val_fraction 0.2 and test_fraction 0.1)",
                   "raise preprocess.val_fraction / test_fraction",
                   "set preprocess.min_images_per_class")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert not (tmp_path / "data/cache").exists()
    params_data["preprocess"].update(val_fraction=0.2, test_fraction=0.2)  # the way out
    (tmp_path / params).write_text(yaml.safe_dump(params_data, sort_keys=False))
    done = run_module("preprocess", "--params", params, cwd=tmp_path)
    assert done.returncode == 0 and "mistyped" not in done.stderr, done.stderr
    assert "preprocess: 45 train + 15 val + 15 test images of 15 classes" in done.stderr


def test_a_minimum_set_by_hand_is_the_key_the_advice_names(tmp_path):
    class_folders(tmp_path / "mine", ("eating", "hugging", "running"), per_class=5)
    dl.download(download_config(source="folder", path=str(tmp_path / "mine")), tmp_path / "raw")
    with pytest.raises(StageError, match=r"3 of 3 classes have fewer than 8 images, the fewest "
                                         r"preprocess keeps a class with \(preprocess"
                                         r".min_images_per_class\): lower preprocess"
                                         r".min_images_per_class \(1 keeps every class"):
        preprocess(preprocess_config(image_size=16, workers=1, min_images_per_class=8),
                   tmp_path / "raw", tmp_path / "cache")


def test_one_class_is_refused_before_decoding(tmp_path):
    class_folders(tmp_path / "mine", ("eating",), per_class=10)
    dl.download(download_config(source="folder", path=str(tmp_path / "mine")), tmp_path / "raw")
    with pytest.raises(StageError, match=r"a classifier needs at least 2 classes with usable "
                                         r"images, and this data set has only 'eating'"):
        preprocess(preprocess_config(image_size=16, workers=1), tmp_path / "raw",
                   tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_one_class_left_after_a_rare_one_goes_is_refused(tmp_path, caplog):
    source = tmp_path / "mine"
    class_folders(source, ("eating",), per_class=12)
    class_folders(source, ("hugging",), per_class=2)
    dl.download(download_config(source="folder", path=str(source)), tmp_path / "raw")
    with caplog.at_level("WARNING", logger="harclip"), \
            pytest.raises(StageError, match="only 'eating'"):
        preprocess(preprocess_config(image_size=16, workers=1), tmp_path / "raw",
                   tmp_path / "cache")
    assert [r.getMessage() for r in caplog.records] == [
        "preprocess: left out 1 class(es) with fewer than 6 images "
        "(preprocess.min_images_per_class): hugging (2)"]


@pytest.mark.parametrize("templates", [[], ["a photo of a person"]])
def test_templates_without_a_place_for_the_class_name_are_one_short_line(tmp_path, templates):
    params = _params(tmp_path, train_clip__prompt_templates=templates)
    done = run_module("config", "--params", params, cwd=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if "prompt_templates" in line]
    assert len(lines) == 1 and len(lines[0]) < 200, done.stderr
    assert lines[0].strip() == (f"params.yaml: train_clip.prompt_templates = {templates!r}: "
                                f"list at least one template, each containing '{{}}' (where "
                                f"the class's phrase goes)")


def test_two_classes_with_the_demo_phrases_left_in_name_the_train_key_in_full(tmp_path):
    """Through the train stage's own command: the message names `train_clip.prompt_names`,
    not a bare `train.`, and the two fixes."""
    class_folders(tmp_path / "mine", ("eating", "hugging"), per_class=12)
    params = _params(tmp_path, download__source="folder",
                     download__path=str(tmp_path / "mine"), preprocess__workers=1)
    for stage in ("download", "preprocess"):
        done = run_module(stage, "--params", params, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    done = run_module("train", "clip", "--params", params, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    one_line_error(done.stderr, "train_clip.prompt_names: ", "not among the 2 classes",
                   "set prompt_names: {}")
    assert not (tmp_path / "models/clip.pt").exists()
