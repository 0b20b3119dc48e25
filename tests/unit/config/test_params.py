"""params.yaml: every shipped file validates; every key is required, so the file is the one
source of a value; the shared `train` section reaches every model and a model's own key
overrides it; a bad key is named where the file holds it, once."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from harclip.config import schema
from harclip.config.params import file_sections, load_params, parse_params, read_yaml
from harclip.config.schema import METHODS
from harclip.runtime.errors import ConfigError
from tests.support import REPO_ROOT

PARAMS_FILES = [REPO_ROOT / "params.yaml", *sorted((REPO_ROOT / "configs").glob("*.yaml"))]
SHIPPED = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def changed(**keys) -> dict:
    """The shipped params with `keys` ("section__key__subkey": value; None deletes) changed."""
    params = copy.deepcopy(SHIPPED)
    for dotted, value in keys.items():
        *path, key = dotted.split("__")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        if value is None:
            del node[key]
        else:
            node[key] = value
    return params


def error_lines(params: dict) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_params(params, Path("p.yaml"))
    return [line.strip() for line in str(err.value).splitlines()[1:]]


def test_there_are_three_params_files():
    names = [p.name for p in PARAMS_FILES]
    assert names == ["params.yaml", "har-recipe.yaml", "original-study.yaml"]


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: p.name)
def test_every_shipped_params_file_validates_and_names_every_section(path):
    load_params(path)
    assert list(read_yaml(path)) == file_sections()


def test_default_is_the_offline_demo_and_the_recipes_use_real_har_at_224():
    default = load_params(REPO_ROOT / "params.yaml")
    assert default.download.source == "synthetic"
    for name in ("har-recipe.yaml", "original-study.yaml"):
        params = load_params(REPO_ROOT / "configs" / name)
        assert params.download.source == "huggingface"
        assert params.preprocess.image_size == 224


def test_the_code_holds_no_default_for_any_key():
    """One source per value: a key deleted from params.yaml is an error, never a silent
    change to a value the code holds (and DVC would not see)."""
    sections = [obj for obj in vars(schema).values()
                if dataclasses.is_dataclass(obj) and isinstance(obj, type)]
    assert len(sections) >= 9
    with_default = [f"{section.__name__}.{field.name}" for section in sections
                    for field in dataclasses.fields(section)
                    if field.default is not dataclasses.MISSING
                    or field.default_factory is not dataclasses.MISSING]
    assert with_default == []


@pytest.mark.parametrize(("keys", "bad", "expected"), [
    ({"download__sorce": "synthetic"}, "download.sorce", "unknown key"),
    ({"preprocess__image_size": "64"}, "preprocess.image_size", "valid integer"),
    ({"preprocess__val_fraction": 1.5}, "preprocess.val_fraction", "less than 1"),
    ({"preprocess__fit": "stretch"}, "preprocess.fit", "'crop' or 'squash'"),
    ({"download__synthetic__seed": True}, "download.synthetic.seed", "valid integer"),
    ({"download__source": "folder"}, "download", "needs download.path"),
    ({"trian_clip": {}}, "trian_clip", "unknown key"),
    ({"train_clip__batch_size": 30, "train_clip__nprocs": 4}, "train_clip",
     "batch_size 30 does not split evenly over nprocs 4"),
    ({"train_sglip__nprocs": 2, "train_sglip__micro_batch_size": 5}, "train_sglip",
     "batch_size / nprocs = 16 images a step, not a multiple of micro_batch_size 5"),
    ({"train_aclip__nprocs": 2, "train_aclip__device": "cuda:1"}, "train_aclip",
     "each process takes the GPU of its local rank"),
    ({"train_clip__nprocs": 0}, "train_clip.nprocs", "greater than or equal to 1"),
    ({"train__lr": "fast"}, "train.lr", "valid number"),
    ({"train__lrr": 0.1}, "train.lrr", "unknown key"),
    ({"train_aclip__aclip__saliency": "psychic"}, "train_aclip.aclip.saliency", "'teacher'"),
    ({"train__lr": None}, "train.lr", "missing key"),
    ({"train_sglip__model": None}, "train_sglip.model", "missing key"),
    ({"evaluate__wise_alphas": None}, "evaluate.wise_alphas", "missing key"),
    ({"evaluate__corruptions__names": ["fog"]}, "evaluate.corruptions.names.0",
     "'gaussian_noise'"),
    ({"evaluate__corruptions__severities": [6]}, "evaluate.corruptions.severities.0",
     "less than or equal to 5"),
    ({"evaluate__corruptions__severities": []}, "evaluate.corruptions",
     "severities: list at least one"),
    ({"train_clip__betas": [0.9, 1.5]}, "train_clip.betas.1", "less than 1"),  # the model's
    ({"train__warmup_epochs": 20.0}, "train", "warmup_epochs 20.0 exceeds epochs 10"),
    ({"train_sglip__warmup_epochs": 20.0}, "train_sglip", "warmup_epochs 20.0 exceeds"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_invalid_params_name_the_key_the_value_and_what_is_accepted(keys, bad, expected):
    lines = error_lines(changed(**keys))
    named = [line for line in lines if f"p.yaml: {bad}" in line or f"'{bad}'" in line]
    assert named and expected in named[0], lines
    assert len(named) == 1, lines  # a shared key once, not once per model


def test_a_shared_key_reaches_every_model_and_a_models_own_key_overrides_it():
    params = parse_params(changed(train__lr=1e-3, train_sglip__lr=2e-4,
                                  train_clip__augment={"flip": False},
                                  train_aclip__prompt_names={}), Path("p.yaml"))
    assert [params.train(m).lr for m in METHODS] == [1e-3, 2e-4, 1e-3]
    flips = [params.train(m).augment for m in METHODS]
    assert [a.flip for a in flips] == [False, True, True]  # a mapping merges key by key:
    assert {a.scale_min for a in flips} == {SHIPPED["train"]["augment"]["scale_min"]}
    assert params.train_aclip.aclip.keep_ratio == SHIPPED["train_aclip"]["aclip"]["keep_ratio"]
    # any other mapping is a value, replaced whole: {} clears the shared phrases
    assert [len(params.train(m).prompt_names) for m in METHODS] == [15, 15, 0]


def test_a_models_section_left_empty_takes_every_shared_key_and_names_what_it_lacks():
    params = changed()
    params["train_sglip"] = None  # `train_sglip:` with nothing under it
    assert [line.split("'")[1] for line in error_lines(params)] == [
        "train_sglip.model", "train_sglip.pretrained", "train_sglip.contrastive_weight"]
    params.update(train_clip=None, train_aclip=None)  # a key all three lack: said once
    assert error_lines(params)[0].startswith("p.yaml: missing key 'train.model' (a key of "
                                             "train reaches every model;")


def test_a_key_of_one_models_own_that_is_not_shared_is_named_in_that_section():
    lines = error_lines(changed(train_clip__aclip=SHIPPED["train_aclip"]["aclip"]))
    assert lines == ["p.yaml: unknown key 'train_clip.aclip' (= "
                     f"{SHIPPED['train_aclip']['aclip']!r}); see README.md for the keys each "
                     "section accepts"]


def test_the_shared_section_is_required(tmp_path):
    params = changed()
    del params["train"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="p.yaml: incomplete: missing section.s. train;"):
        load_params(path)
    params["train"] = ["lr", 1e-3]
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match="train: expected a mapping of keys"):
        load_params(path)


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


def test_every_fine_tuning_tool_is_off_in_the_shipped_params_and_validated():
    """The tools stay off (docs/results/finetune.md: none beat full fine-tuning beyond the
    seed spread); WiSE-FT's curve is on, an evaluation only."""
    params = load_params(REPO_ROOT / "params.yaml")
    for method in METHODS:
        config = params.train(method)
        assert (config.layer_decay, config.ema_decay, config.label_smoothing, config.tune,
                config.grad_checkpointing) == (1.0, 0.0, 0.0, "full", False)
    assert params.evaluate.wise_alphas == (0.0, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(ValueError):
        dataclasses.replace(params.train_clip, tune="half")
    assert np.isclose(dataclasses.replace(params.train_clip, layer_decay=0.65).layer_decay, 0.65)
