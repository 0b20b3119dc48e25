import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harclip.config import ConfigError, load_params, parse_params, read_yaml, section_names
from tests.conftest import REPO_ROOT

PARAMS_FILES = [REPO_ROOT / "params.yaml", *sorted((REPO_ROOT / "configs").glob("*.yaml"))]


def test_there_are_three_params_files():
    names = [p.name for p in PARAMS_FILES]
    assert names == ["params.yaml", "har-recipe.yaml", "original-study.yaml"]


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_every_shipped_params_file_validates_and_names_every_section(path):
    load_params(path)
    assert list(read_yaml(path)) == section_names()


def test_default_is_the_offline_demo_and_the_recipes_use_real_har_at_224():
    default = load_params(REPO_ROOT / "params.yaml")
    assert default.download.source == "synthetic"
    for name in ("har-recipe.yaml", "original-study.yaml"):
        params = load_params(REPO_ROOT / "configs" / name)
        assert params.download.source == "huggingface"
        assert params.preprocess.image_size == 224


@pytest.mark.parametrize(("section", "bad", "expected"), [
    ({"download": {"sorce": "synthetic"}}, "download.sorce", "unknown key"),
    ({"preprocess": {"image_size": "64"}}, "preprocess.image_size", "valid integer"),
    ({"preprocess": {"val_fraction": 1.5}}, "preprocess.val_fraction", "less than 1"),
    ({"preprocess": {"fit": "stretch"}}, "preprocess.fit", "'crop' or 'squash'"),
    ({"download": {"synthetic": {"seed": True}}}, "download.synthetic.seed", "valid integer"),
    ({"download": {"source": "folder"}}, "download", "needs download.path"),
    ({"trian_clip": {}}, "trian_clip", "unknown key"),
    ({"train_clip": {"batch_size": 30, "nprocs": 4}}, "train_clip",
     "batch_size 30 does not split evenly over nprocs 4"),
    ({"train_sglip": {"batch_size": 32, "nprocs": 2, "micro_batch_size": 5}}, "train_sglip",
     "batch_size / nprocs = 16 images a step, not a multiple of micro_batch_size 5"),
    ({"train_aclip": {"nprocs": 2, "device": "cuda:1"}}, "train_aclip",
     "each process takes the GPU of its local rank"),
    ({"train_clip": {"nprocs": 0}}, "train_clip.nprocs", "greater than or equal to 1"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_invalid_params_name_the_key_the_value_and_what_is_accepted(section, bad, expected):
    with pytest.raises(ConfigError) as err:
        parse_params(section, Path("p.yaml"))
    message = str(err.value)
    assert f"p.yaml: {bad}" in message or f"'{bad}'" in message
    assert expected in message


def test_yaml_reads_exponent_floats_as_dvc_does(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: 1e-4\nb: 5e3\nc: '1e-4'\n")
    assert read_yaml(path) == {"a": 1e-4, "b": 5000.0, "c": "1e-4"}


def test_missing_or_malformed_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("download: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_a_stage_with_invalid_params_fails_before_writing_anything(tmp_path):
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["preprocess"]["max_bad_fraction"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "raw"
    result = subprocess.run([sys.executable, "-m", "harclip.download", "--params",
                             str(tmp_path / "params.yaml"), "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert "preprocess.max_bad_fraction = 2" in result.stderr
    assert not out.exists()
