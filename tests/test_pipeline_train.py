"""train_clip / train_sglip under real DVC, and the HAR-recipe architectures themselves."""

import csv
import json

import open_clip
import pytest
import torch

from harclip.config import TrainConfig
from harclip.engine import Batch, Objective, parameter_groups
from harclip.har import CLASS_NAMES
from harclip.models import PromptEncoder, build_classifier, init_head, load_checkpoint
from tests.dvc_project import DvcProject, tiny_params

pytestmark = pytest.mark.slow

STUDY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s",
                 "images_per_s", "peak_memory_mb", "lr"]


def tiny_training_params() -> dict:
    params = tiny_params()
    params["preprocess"]["image_size"] = 32
    for section in ("train_clip", "train_sglip", "train_aclip"):
        params[section].update(epochs=2, batch_size=16, log_every=1)
    return params


def test_train_stages_write_checkpoint_logs_and_metrics_and_rerun_only_when_edited(tmp_path):
    project = DvcProject(tmp_path, tiny_training_params())
    assert project.repro("train_clip") == ["download", "preprocess", "train_clip"]

    model, meta = load_checkpoint(tmp_path / "models" / "clip.pt")
    assert meta["model"] == "harclip-tiny-clip" and meta["class_names"] == list(CLASS_NAMES)
    assert meta["params"]["epochs"] == 2 and meta["epoch"] in (1, 2)
    with open(tmp_path / "logs" / "clip" / "epochs.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == STUDY_COLUMNS and [r["epoch"] for r in rows] == ["1", "2"]
    log_text = (tmp_path / "logs" / "clip" / "train.log").read_text()
    assert "clip epoch 2: train loss" in log_text
    metrics = json.loads((tmp_path / "metrics" / "clip" / "train.json").read_text())
    assert metrics["best_val_acc"] == pytest.approx(max(float(r["val_acc"]) for r in rows),
                                                   abs=1e-6)  # the TSV keeps 6 decimals
    assert metrics["best_epoch"] == meta["epoch"]
    assert metrics["parameters"] == sum(p.numel() for p in model.parameters())
    assert project.dvc("status", "train_clip").strip().startswith("Data and pipelines are up")

    trained = ("train_sglip", "train_aclip")  # evaluate and plot are another test's subject
    assert sorted(project.repro(*trained)) == ["train_aclip", "train_sglip"]
    for name in ("sglip", "aclip"):
        assert (tmp_path / "models" / f"{name}.pt").is_file()
        assert (tmp_path / "metrics" / name / "train.json").is_file()
        assert (tmp_path / "logs" / name / "epochs.tsv").is_file()
    project.commit("trained")
    project.set_param("train_sglip.lr", 5e-4)
    assert project.changed_stages("train_clip", *trained) == {"train_sglip"}
    assert project.repro("train_clip", *trained) == ["train_sglip"]
    project.set_param("train_aclip.aclip.keep_ratio", 0.25)
    assert project.changed_stages("train_clip", *trained) == {"train_aclip"}
    assert project.repro("train_clip", *trained) == ["train_aclip"]
    assert project.changed_stages("train_clip", *trained) == set()


@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "ViT-B-16-SigLIP"])
def test_har_recipe_architecture_takes_a_training_step_on_cpu(name):
    """The real backbones, random init; SigLIP's hub tokenizer is swapped for an offline one."""
    torch.manual_seed(0)
    model = build_classifier(name, None, len(CLASS_NAMES))
    text_cfg = open_clip.get_model_config(name)["text_cfg"]
    simple = open_clip.SimpleTokenizer(context_length=text_cfg["context_length"])

    def tokenizer(texts):  # ids inside this text tower's vocabulary
        return simple(texts) % text_cfg["vocab_size"]

    prompts = PromptEncoder(tokenizer, CLASS_NAMES, TrainConfig().prompt_templates)
    with torch.no_grad():
        init_head(model, prompts(model.clip), "text")
    size = model.clip.visual.image_size
    images = torch.randn(2, 3, *(size if isinstance(size, tuple) else (size, size)))
    labels = torch.tensor([0, 7])
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-5)
    loss, logits = Objective().loss(model, Batch(images, labels))
    loss.backward()
    optimizer.step()
    assert logits.shape == (2, 15) and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.clip.visual.parameters() if p.requires_grad)
