"""Pretraining harclip-tiny-clip (open_clip's ClipLoss) and harclip-tiny-siglip (SigLipLoss)
on the captioned synthetic world: the work behind `python -m harclip.pretrain`.

The world's images take the demo's own path (drawn, JPEG-encoded, decoded to the cache size)
into a uint8 cache; the engine's pieces do the rest: crops and flips on the device for the
whole batch, AdamW without decay on biases, norms and logit scale, linear warmup then cosine.
Each step reads one of each image's phrasings at random. The result is a state dict that
`open_clip.create_model(name, pretrained=<file>)` loads, as downloaded weights are, stored in
fp16, with what it was trained on and what it scored (`harclip` key) beside it.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import numpy as np
import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from harclip.config.schema import TrainConfig
from harclip.data.decode import decode
from harclip.data.layout import CLASS_NAMES
from harclip.data.synthetic.scenes import generate, generate_shifted
from harclip.model.backbones import (
    create_backbone,
    create_tokenizer,
    image_normalisation,
    is_siglip,
)
from harclip.model.classifier import build_model
from harclip.model.feed import CachedSplit, effective_batches
from harclip.model.optim import make_scheduler, parameter_groups
from harclip.model.storage import save_atomically
from harclip.model.views import DeviceAugment
from harclip.pretrain.config import PretrainConfig
from harclip.pretrain.world import generate_world
from harclip.runtime.devices import describe
from harclip.runtime.log import log, progress

MODELS = {"clip": "harclip-tiny-clip", "siglip": "harclip-tiny-siglip"}
OUT_DIR = Path("models/pretrained")
MAX_LOGIT_SCALE = math.log(100)  # open_clip's clamp during training


def _cached(image, draw_size: int, size: int) -> np.ndarray:
    """An image as the demo's reach the cache: a JPEG (quality 92) decoded to `size`."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return decode(buffer.getvalue(), size)


def build_world(config: PretrainConfig, count: int, seed: int, tokenizer
                ) -> tuple[np.ndarray, torch.Tensor]:
    """`count` world images (N×3×S×S uint8) and their captions' tokens (N×phrasings×context)."""
    world = config.world
    images, texts = [], []
    scenes = generate_world(count, world.draw_size, seed, world.phrasings, tokenizer)
    for _, image, captions in progress(scenes, total=count, desc="drawing the world",
                                       unit="img"):
        images.append(_cached(image, world.draw_size, world.image_size))
        texts += captions
    return np.stack(images), tokenizer(texts).view(count, world.phrasings, -1)


def contrastive_loss(model: nn.Module) -> nn.Module:
    """open_clip's pretraining loss of the model's family."""
    return SigLipLoss() if is_siglip(model) else ClipLoss()


def pretrain(model: nn.Module, images: np.ndarray, tokens: torch.Tensor,
             config: PretrainConfig, device: torch.device) -> list[dict]:
    """Train `model` contrastively on the world; return per-epoch loss and in-batch
    image→caption accuracy."""
    model.to(device).train()
    split = CachedSplit(images, np.arange(len(images)), device)
    tokens = tokens.to(device)
    augment = DeviceAugment(images.shape[-1], *image_normalisation(model),
                            scale=(config.augment.scale_min, 1.0), flip=config.augment.flip)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  betas=(0.9, 0.98))
    steps = len(images) // config.batch_size
    scheduler = make_scheduler(optimizer, config.lr, config.epochs, config.warmup_epochs, steps)
    loss_fn = contrastive_loss(model)
    shuffle = torch.Generator().manual_seed(config.seed)
    draws = torch.Generator(device=device).manual_seed(config.seed + 1)
    history, step = [], 0
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(len(images), generator=shuffle)
        crops = augment.crop_params(len(images), draws, device)
        phrasing = torch.randint(tokens.shape[1], (len(images),), generator=draws,
                                 device=device)
        sums = torch.zeros(2, device=device)
        bar = progress(total=steps, desc=f"pretrain epoch {epoch}/{config.epochs}",
                       unit="step", leave=False)
        for group in effective_batches(order, config.batch_size, 1, drop_last=True):
            scheduler.step_update(step)
            pixels, _, index = next(split.batches(group, len(group), with_index=True))
            image_features = model.encode_image(augment.warp(pixels, crops[index]),
                                                normalize=True)
            text_features = model.encode_text(tokens[index, phrasing[index]], normalize=True)
            scale = model.logit_scale.exp()
            extra = (model.logit_bias,) if is_siglip(model) else ()
            loss = loss_fn(image_features, text_features, scale, *extra)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
                hits = (image_features @ text_features.T).argmax(dim=1) == \
                    torch.arange(len(group), device=device)
                sums += torch.stack([loss.detach(), hits.float().mean()])
            step += 1
            bar.update()
        bar.close()
        loss_mean, accuracy = (sums / steps).tolist()
        history.append({"epoch": epoch, "loss": loss_mean, "batch_accuracy": accuracy})
        log.info("pretrain epoch %d: contrastive loss %.4f, in-batch image→caption "
                 "accuracy %.3f", epoch, loss_mean, accuracy)
    return history


@torch.no_grad()
def retrieval(model: nn.Module, images: np.ndarray, tokens: torch.Tensor,
              device: torch.device) -> dict:
    """Image→caption retrieval over held-out scenes (each image's first phrasing among all
    theirs): recall at 1 and 5, a hit being a caption with the image's own words (scenes
    that read alike share one)."""
    model.eval()
    augment = DeviceAugment(images.shape[-1], *image_normalisation(model))
    pixels = augment.eval(torch.from_numpy(images).to(device))
    texts = tokens[:, 0].to(device)
    similarity = model.encode_image(pixels, normalize=True) @ \
        model.encode_text(texts, normalize=True).T
    same = (texts.unsqueeze(1) == texts.unsqueeze(0)).all(dim=-1)
    ranked = similarity.topk(5, dim=1).indices
    found = same.gather(1, ranked)
    return {"images": len(images), "recall_at_1": float(found[:, 0].float().mean()),
            "recall_at_5": float(found.any(dim=1).float().mean()),
            "chance_at_1": float(same.float().sum(dim=1).mean() / len(images))}


@torch.no_grad()
def zero_shot(train: TrainConfig, config: PretrainConfig, device: torch.device) -> dict:
    """Accuracy on a HAR stand-in sample (drawn apart from the demo's, with zero_shot_seed)
    of the model the demo's fine-tuning starts from: `train` (its pretrained file and
    prompts) built as training builds it, with the class-prompt head; and under `shift`, on as
    many images of the demo's shifted palette."""
    world = config.world
    classifier, _ = build_model(replace(train, head_init="text"))
    classifier.to(device).eval()
    augment = DeviceAugment(world.image_size, *image_normalisation(classifier.clip))

    def scored(drawn: list) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.stack([_cached(image, world.draw_size, world.image_size)
                           for _, image in drawn])
        labels = torch.tensor([CLASS_NAMES.index(label) for label, _ in drawn], device=device)
        return classifier(augment.eval(torch.from_numpy(images).to(device))).argmax(dim=1), \
            labels

    count, seed = config.zero_shot_images_per_class, config.zero_shot_seed
    predicted, labels = scored(list(generate(count, world.draw_size, seed)))
    shifted, shifted_labels = scored(list(generate_shifted(count, world.draw_size, seed)))
    per_class = {name: float((predicted[labels == index] == index).float().mean())
                 for index, name in enumerate(CLASS_NAMES)}
    return {"images": len(labels), "accuracy": float((predicted == labels).float().mean()),
            "chance": 1 / len(CLASS_NAMES), "per_class": per_class,
            "shift": {"images": len(shifted_labels),
                      "accuracy": float((shifted == shifted_labels).float().mean())}}


def save(model: nn.Module, path: Path, card: dict) -> None:
    """The weights as fp16 under `state_dict` (open_clip's loader takes that key), the card
    beside them under `harclip`, atomically; and the card as JSON next to the file."""
    state = {key: value.detach().to("cpu", torch.float16)
             for key, value in model.state_dict().items()}
    save_atomically({"state_dict": state, "harclip": card}, path)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")


def run(which: str, config: PretrainConfig, train: TrainConfig, out_dir: Path = OUT_DIR,
        device: torch.device | None = None) -> dict:
    """Pretrain one model and write out_dir/<name>.pt and .json; return the card."""
    device = device or torch.device("cpu")
    name = MODELS[which]
    torch.manual_seed(config.seed)
    tokenizer = create_tokenizer(name)
    images, tokens = build_world(config, config.world.images, config.world.seed, tokenizer)
    held_images, held_tokens = build_world(config, config.world.held_out,
                                           config.world.seed + 1, tokenizer)
    model = create_backbone(name, None)
    started = time.perf_counter()
    history = pretrain(model, images, tokens, config, device)
    seconds = time.perf_counter() - started
    path = out_dir / f"{name}.pt"
    card = {"model": name, "loss": "SigLipLoss" if is_siglip(model) else "ClipLoss",
            "config": asdict(config), "history": history, "train_time_s": round(seconds, 1),
            "hardware": describe(), "date": date.today().isoformat()}
    save(model, path, card)
    shipped = create_backbone(name, str(path)).to(device)  # as users load it: open_clip, fp16
    card |= {"retrieval": retrieval(shipped, held_images, held_tokens, device),
             "zero_shot": zero_shot(replace(train, model=name, pretrained=str(path)),
                                    config, device)}
    save(shipped, path, card)
    log.info("pretrain %s: %s (%.0f s); held-out retrieval R@1 %.3f, R@5 %.3f; "
             "zero-shot on the HAR stand-in %.3f, on its shifted palette %.3f", which, path,
             seconds, card["retrieval"]["recall_at_1"], card["retrieval"]["recall_at_5"],
             card["zero_shot"]["accuracy"], card["zero_shot"]["shift"]["accuracy"])
    return card
