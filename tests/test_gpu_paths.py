"""What a first GPU run would trip on, shown on the CPU: DistributedDataParallel built with
the keyword the installed torch knows (and over a group of one), validation that does not
recompile a compiled tower, no host reads while no progress bar shows them, TF32, the class
prompts encoded cut to their longest, and a resume state without the frozen weights, saved
every `resume_every` epochs."""

from __future__ import annotations

import sys
from typing import ClassVar

import open_clip
import pytest
import torch
import torch.distributed as dist
from torch import nn

from harclip import distributed, hardware, training
from harclip.config import TrainConfig
from harclip.distributed import World
from harclip.models import create_backbone, create_tokenizer, encode_text_cut
from tests.test_recipe_paths import _trainer


class Torch211DDP:
    """DistributedDataParallel's signature in torch 2.11 (no forward_sync_buffers: it came in
    2.13); records what it was built with."""

    built: ClassVar[dict] = {}

    def __init__(self, module, device_ids=None, output_device=None, dim=0,
                 broadcast_buffers=True, init_sync=True, process_group=None, bucket_cap_mb=None,
                 find_unused_parameters=False, check_reduction=False,
                 gradient_as_bucket_view=False, static_graph=False,
                 delay_all_reduce_named_params=None, param_to_hook_all_reduce=None,
                 mixed_precision=None, device_mesh=None, skip_all_reduce_unused_params=False):
        Torch211DDP.built = {"broadcast_buffers": broadcast_buffers,
                             "gradient_as_bucket_view": gradient_as_bucket_view}


def test_ddp_is_built_with_the_buffer_keyword_torch_211_knows(monkeypatch):
    monkeypatch.setattr(distributed, "DistributedDataParallel", Torch211DDP)
    distributed.data_parallel(nn.Linear(2, 2))
    assert Torch211DDP.built == {"broadcast_buffers": False, "gradient_as_bucket_view": True}


def test_a_group_of_one_wraps_the_step_in_the_installed_ddp_and_trains(tmp_path):
    """What `torchrun --nproc-per-node=1` gives a stage: a process group of one, so the GPU
    check builds DistributedDataParallel on a single GPU too."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        config = TrainConfig(epochs=1, batch_size=8, device="cpu")
        torch.manual_seed(0)
        trainer = _trainer(config, n_train=16)
        grouped = type(trainer)(trainer.model, trainer.objective, trainer.train_split,
                                trainer.val_split, trainer.augment, config,
                                World(grouped=True))
        assert isinstance(grouped.train_step, nn.parallel.DistributedDataParallel)
        record, = grouped.fit()
        assert record.train_loss > 0
    finally:
        dist.destroy_process_group()


def test_validation_of_a_compiled_tower_compiles_nothing_more():
    """Eval mode, no_grad and another batch size would make Dynamo compile the tower again
    (with a dynamic batch); validation runs eager instead (aot_eager: the capture without
    code generation)."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    torch.manual_seed(0)
    trainer = _trainer(TrainConfig(epochs=2, batch_size=8, compile=True), n_train=16,
                       n_val=12)
    trainer.model.clip.visual.compile(backend="aot_eager")
    history = trainer.fit()
    assert counters["stats"]["unique_graphs"] == 1  # the training step's graph alone
    assert all(record.val_time_s > 0 for record in history)
    torch._dynamo.reset()


def test_no_host_reads_in_an_epoch_without_a_live_progress_bar(monkeypatch):
    """Under pytest (no terminal) the bar is off: the loss and accuracy stay on the device
    until the epoch ends, however many steps log_every would refresh."""
    reads = []
    original = torch.Tensor.item

    def item(tensor):  # the engine's reads (AdamW's own on the CPU are not a GPU's)
        if sys._getframe(1).f_code.co_filename.endswith(("engine.py", "distributed.py")):
            reads.append(1)
        return original(tensor)

    monkeypatch.setattr(torch.Tensor, "item", item)
    counts = []
    for images in (16, 48):  # 2 and 6 steps
        reads.clear()
        trainer = _trainer(TrainConfig(epochs=1, batch_size=8, log_every=1), n_train=images)
        trainer.fit()
        counts.append(len(reads))
    assert counts[0] == counts[1]  # none per step


def test_tf32_is_turned_on_for_a_gpu_only():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        hardware.enable_tf32(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
        hardware.enable_tf32(torch.device("cuda", 0))  # sets a flag; needs no GPU
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32  # the getter Inductor calls still works
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("name", ["harclip-tiny-clip", "harclip-tiny-siglip",
                                  "ViT-B-32-quickgelu"])
def test_prompts_cut_to_the_longest_encode_as_the_whole_context(name):
    torch.manual_seed(0)
    clip = create_backbone(name, None).eval()
    tokenizer = create_tokenizer(name) if name.startswith("harclip") else \
        open_clip.SimpleTokenizer()
    tokens = tokenizer(["a photo of a person calling.",
                        "a person lying on a bed with closed eyes, under a blanket"])
    lengths = []
    handle = (getattr(clip, "text", clip)).transformer.register_forward_pre_hook(
        lambda _m, args: lengths.append(args[0].shape[1]))
    with torch.no_grad():
        cut = encode_text_cut(clip, tokens, int((tokens != 0).sum(dim=1).max()))
        lengths_cut = lengths[:]
        full = clip.encode_text(tokens, normalize=True)
    handle.remove()
    assert lengths_cut == [int((tokens != 0).sum(dim=1).max())] < [tokens.shape[1]]
    assert torch.allclose(cut, full, atol=1e-5)


def test_a_tower_without_a_causal_mask_gets_the_whole_context():
    """SigLIP's webli text tower attends both ways and pools the last position: cutting
    would change it, so it is encoded whole."""
    torch.manual_seed(0)
    clip = create_backbone("ViT-B-16-SigLIP", None).eval()
    tokens = torch.zeros(2, clip.text.num_pos, dtype=torch.long)
    tokens[:, :5] = torch.randint(1, 1000, (2, 5))
    with torch.no_grad():
        assert torch.allclose(encode_text_cut(clip, tokens, 5),
                              clip.encode_text(tokens, normalize=True))


def test_the_resume_state_leaves_the_frozen_text_tower_out(tmp_path):
    config = TrainConfig(epochs=2, batch_size=8, head_init="text", contrastive_weight=0.0)
    torch.manual_seed(0)
    trainer = _trainer(config, n_train=16)
    trainer.fit(lambda record: None)
    state = trainer.state_dict()
    assert trainer.frozen and not set(state["model"]) & trainer.frozen
    assert all(key.startswith(("clip.visual.", "head.")) for key in state["model"])
    torch.manual_seed(1)  # another init: the frozen weights come from `pretrained` (none here)
    fresh = _trainer(config, n_train=16)
    fresh.load_state_dict(state)
    trained = dict(trainer.model.named_parameters())
    for name, param in fresh.model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, trained[name]), name


def test_the_resume_state_is_saved_every_resume_every_epochs_but_the_last(
        small_cache, tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(training, "save_resume_state",
                        lambda path, fingerprint, trainer: saved.append(len(trainer.history)))
    summary = training.run("clip", TrainConfig(epochs=5, batch_size=64, resume_every=2,
                                               device="cpu"), small_cache,
                           tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    assert saved == [2, 4]
    from harclip.records import read_epochs

    rows = read_epochs(tmp_path / "logs" / "clip")
    assert all(row["save_time_s"] > 0 for row in rows)  # the checkpoint, the state: timed
    assert summary["mean_save_time_s"] > 0


def test_a_resumed_run_keeps_the_best_checkpoint_of_the_epochs_it_restored(
        small_cache, tmp_path, monkeypatch):
    """With resume_every 2, a run stopped in epoch 3 resumes after epoch 2; the best.pt a
    later epoch of the stopped run wrote is not this run's: the one saved with the state is."""
    config = TrainConfig(epochs=3, batch_size=64, resume_every=2, device="cpu")
    folders = (tmp_path / "models", tmp_path / "logs", tmp_path / "resume")
    original = training.Trainer._epoch

    def stop_in_epoch_3(self, epoch, describe):
        if epoch == 3:
            best = tmp_path / "resume" / "clip" / "best.pt"  # as if epoch 3 had saved one
            payload = torch.load(best, weights_only=True)
            torch.save({**payload, "epoch": 3, "val_acc": 0.99}, best)
            raise KeyboardInterrupt
        return original(self, epoch, describe)

    monkeypatch.setattr(training.Trainer, "_epoch", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        training.run("clip", config, small_cache, *folders)
    monkeypatch.setattr(training.Trainer, "_epoch", original)
    summary = training.run("clip", config, small_cache, *folders)
    saved = torch.load(tmp_path / "models" / "clip.pt", weights_only=True)
    assert summary["best_val_acc"] < 0.99 and saved["val_acc"] == summary["best_val_acc"]
    assert saved["epoch"] == summary["best_epoch"]


def test_the_prompt_encoder_reads_nothing_back_from_the_device(monkeypatch):
    """The image–text term runs every micro-batch: its prompts' length is known on the host,
    not read from the device's tokens each time (a GPU sync)."""
    from harclip.har import CLASS_NAMES
    from harclip.models import PromptEncoder

    prompts = PromptEncoder(create_tokenizer("harclip-tiny-clip"), CLASS_NAMES, ["a {}"])
    clip = create_backbone("harclip-tiny-clip", None)

    def host_read(*_args):
        raise AssertionError("a value read back from the device")

    for name in ("item", "__int__", "tolist", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    assert prompts(clip).shape == (len(CLASS_NAMES), 128)
