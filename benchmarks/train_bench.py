"""Benchmark the training stages' engine: images/s, time per HAR epoch and peak memory.

    python benchmarks/train_bench.py                      # the HAR recipe on a GPU
    python benchmarks/train_bench.py --small --device cpu # tiny shapes, any machine
    python benchmarks/train_bench.py --small --overhead   # the engine against a bare loop
    python benchmarks/train_bench.py --small --stream     # a streamed cache against a resident

Runs the real engine (`harclip.train.engine.Trainer`: device-resident uint8 cache, on-device
augmentation, bf16 autocast, fused AdamW, optional torch.compile) on HAR-sized synthetic data
for each method, and, for comparison, the naive input path (JPEG files decoded by PIL and
augmented by torchvision in DataLoader workers) feeding the same CLIP model. Timings come
from the second epoch, after warm-up and compilation. Weights are random: speed does not
depend on them, and no download is needed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harclip.config.params import load_params
from harclip.config.schema import TrainConfig
from harclip.data.layout import CLASS_NAMES
from harclip.data.synthetic.scenes import generate
from harclip.model.backbones import image_normalisation, model_image_size
from harclip.model.classifier import build_model
from harclip.model.feed import Batch, CachedSplit
from harclip.model.views import DeviceAugment
from harclip.runtime.devices import describe, resolve_device
from harclip.train.engine import Trainer
from harclip.train.objectives import Objective
from harclip.train.stage import build_objective

HAR_TRAIN_IMAGES = 10_080  # 80 % of HAR's 12,600 labelled images
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "har-recipe.yaml"


def cases(small: bool, batch: int, compile_: bool) -> list[tuple[str, TrainConfig]]:
    """(label, config) for every method measured: the recipe's training params from random
    weights, one prompt template, A-CLIP's cached saliency refreshed every epoch (the figures
    in docs/benchmarks.md were taken so); `small` swaps in the tiny models."""
    recipe = load_params(RECIPE)
    timed = {"epochs": 2, "batch_size": batch, "warmup_epochs": 0.0, "compile": compile_,
             "log_every": 10**9, "head_init": "random", "pretrained": None,
             "prompt_templates": ("a photo of a person {}.",)}  # A-CLIP's text term: one
    clip, siglip, vit16 = (("harclip-tiny-clip", "harclip-tiny-siglip", "harclip-tiny-clip")
                           if small else
                           ("ViT-B-32-quickgelu", "ViT-B-16-SigLIP", "ViT-B-16-quickgelu"))
    base = replace(recipe.train_clip, **timed)
    aclip = replace(recipe.train_aclip, **timed, model=vit16, contrastive_weight=0.5)
    return [
        ("train_clip", replace(base, model=clip)),
        ("train_sglip", replace(base, model=siglip)),
        ("full-token ViT-B/16", replace(base, model=vit16)),
        ("train_aclip, teacher every step",
         replace(aclip, aclip=replace(aclip.aclip, saliency="teacher"), compile=False)),
        ("train_aclip, cached saliency",
         replace(aclip, aclip=replace(aclip.aclip, saliency="cached", refresh_epochs=1),
                 compile=False)),  # the timed epoch (the second) refreshes too
    ]


def build(config: TrainConfig, device: torch.device) -> tuple[nn.Module, Objective]:
    """The stage's own model and objective (random weights; the head is random too, so
    SigLIP's hub tokenizer is not needed)."""
    model, prompts = build_model(config)
    return model.to(device), build_objective(config, model, prompts.to(device)
                                             if prompts is not None else None)


def synthetic_cache(count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` generated HAR-like images at `size` px as a uint8 N×3×S×S array."""
    images = np.empty((count, 3, size, size), np.uint8)
    labels = np.empty(count, np.int64)
    for index, (label, image) in enumerate(generate(-(-count // 15), size, seed=0)):
        if index == count:
            break
        images[index] = np.asarray(image).transpose(2, 0, 1)
        labels[index] = CLASS_NAMES.index(label)
    return images, labels


def measure(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
            device: torch.device, cache_in_memory: bool | str = True,
            after_epoch=lambda record: None, val: tuple | None = None) -> dict:
    model, objective = build(config, device)
    if config.compile:
        model.clip.visual.compile()
    augment = DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip))
    train_split = CachedSplit(images, labels, device, cache_in_memory)
    val_split = CachedSplit(*(val or (images[:64], labels[:64])), device, True)
    history = Trainer(model, objective, train_split, val_split, augment, config).fit(
        after_epoch)
    timed = history[-1]
    return {"images_per_s": timed.images_per_s, "epoch_time_s": timed.epoch_time_s,
            "peak_memory_mb": timed.peak_memory_mb}


def bare_loop(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
              device: torch.device) -> dict:
    """The stage's step with nothing around it: the same model, cache on the device, crops,
    autocast and AdamW, but no clipping, schedule, loss bookkeeping or progress bar; the
    second epoch is timed, as the engine's is."""
    model, objective = build(config, device)
    if config.compile:
        model.clip.visual.compile()
    augment = DeviceAugment(model_image_size(model.clip), *image_normalisation(model.clip))
    split = CachedSplit(images, labels, device, True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, betas=config.betas,
                                  weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    dtype = torch.bfloat16 if device.type == "cuda" else None
    generator = torch.Generator(device=device).manual_seed(0)
    model.train()
    for _epoch in (1, 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        order = split.host_index(torch.randperm(len(split)))
        crops = augment.crop_params(len(split), generator, device)
        seen = 0
        for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
            (batch, batch_labels, index), = split.batches(
                order[start:start + config.batch_size], config.batch_size, with_index=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss, _, _ = objective.loss(model, Batch(augment.warp(batch, crops[index]),
                                                         batch_labels, index))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seen += len(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    return {"images_per_s": seen / elapsed, "epoch_time_s": elapsed,
            "peak_memory_mb": float("nan")}


def overhead(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
             device: torch.device, rounds: int) -> list[tuple[str, dict]]:
    """The bare loop and the engine measured alternately `rounds` times: a shared machine's
    drift then falls on both; each row is its median round, the engine's ratio the
    overhead's measure (1: none)."""
    runs: dict[str, list[dict]] = {"train_clip, a bare loop of its step": [],
                                   "train_clip, the stage's engine": []}
    for _ in range(rounds):
        for results, run in zip(runs.values(), (bare_loop, measure), strict=True):
            results.append(run(config, images, labels, device))
    return [(label, sorted(results, key=lambda r: r["images_per_s"])[len(results) // 2])
            for label, results in runs.items()]


def streamed(config: TrainConfig, images: np.ndarray, labels: np.ndarray,
             device: torch.device, rounds: int) -> list[tuple[str, dict]]:
    """The stage's engine fed from a memory-mapped cache file (cache_in_memory: false), its
    pages cached, then dropped from the page cache before the timed epoch (where the OS
    allows: posix_fadvise), beside the same file read into memory; the three alternate
    `rounds` times, each row its median round."""
    from harclip.data.cache import CacheItem, load_split, write_cache

    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder)
        write_cache(cache, [CacheItem(str(i), int(label), str(i), image)
                            for i, (image, label) in enumerate(zip(images, labels, strict=True))],
                    np.zeros(len(images), np.int64), CLASS_NAMES, images.shape[-1])

        def drop(record) -> None:
            if record.epoch != 1:
                return
            path = cache / "train_images.npy"
            with open(path, "rb") as handle:
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            if shutil.which("fincore"):  # what the drop left in the page cache
                left = subprocess.run(["fincore", "--bytes", "--noheadings", "--output",
                                       "RES", str(path)], capture_output=True, text=True)
                print(f"  after the drop, {left.stdout.strip() or '?'} bytes of the "
                      f"{path.stat().st_size:,}-byte file stay cached", flush=True)

        cases = [("resident (cache_in_memory: true)", True, None),
                 ("streamed, file in the page cache", False, None),
                 ("streamed, page cache dropped", False, drop)]
        for _ in range(rounds):
            for label, where, hook in cases:
                if hook is drop and not hasattr(os, "posix_fadvise"):
                    continue
                # A fresh map each time, val from memory: pages a map has touched stay
                # mapped, and the page cache cannot drop mapped pages.
                runs.setdefault(f"train_clip, {label}", []).append(
                    measure(config, *load_split(cache, "train"), device, where,
                            hook or (lambda record: None), (images[:64], labels[:64])))
    return [(label, sorted(results, key=lambda r: r["images_per_s"])[len(results) // 2])
            for label, results in runs.items()]


def naive_input_path(images: np.ndarray, config: TrainConfig, device: torch.device,
                     workers: int) -> dict:
    """The same CLIP step, fed by JPEG files through PIL + torchvision in DataLoader workers."""
    from PIL import Image
    from torchvision import datasets, transforms

    model, objective = build(config, device)
    size = model_image_size(model.clip)
    mean, std = image_normalisation(model.clip)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-5, fused=device.type == "cuda")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "x").mkdir()
        for index, array in enumerate(images):
            Image.fromarray(array.transpose(1, 2, 0)).save(Path(folder) / "x" / f"{index}.jpg",
                                                           quality=90)
        dataset = datasets.ImageFolder(folder, transforms.Compose([
            transforms.RandomResizedCrop(size, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(mean, std)]))
        loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size,
                                             shuffle=True, num_workers=workers,
                                             pin_memory=device.type == "cuda",
                                             persistent_workers=workers > 0, drop_last=True)
        dtype = torch.bfloat16 if device.type == "cuda" else None
        for _epoch in (1, 2):  # the second epoch is timed: workers and caches are warm
            if device.type == "cuda":
                torch.cuda.synchronize()
            started, seen = time.perf_counter(), 0
            for batch, _ in loader:
                batch = batch.to(device, non_blocking=True)
                labels = torch.randint(0, len(CLASS_NAMES), (len(batch),), device=device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss, _, _ = objective.loss(model, Batch(batch, labels))
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                seen += len(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
    return {"images_per_s": seen / elapsed, "epoch_time_s": elapsed * len(images) / max(1, seen),
            "peak_memory_mb": float("nan")}


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--small", action="store_true", help="tiny models at 64 px (CPU)")
    cli.add_argument("--device", default="auto")
    cli.add_argument("--images", type=int, help=f"training images (default: "
                     f"{HAR_TRAIN_IMAGES}, or 512 with --small)")
    cli.add_argument("--batch", type=int, help="batch size (default: 256, or 32 with --small)")
    cli.add_argument("--compile", action="store_true", help="torch.compile the image towers")
    cli.add_argument("--workers", type=int, default=16, help="naive path's DataLoader workers")
    cli.add_argument("--only", nargs="*", help="measure only cases whose label contains these")
    cli.add_argument("--json", type=Path, help="also write the results here")
    cli.add_argument("--overhead", action="store_true",
                     help="train_clip's engine against a bare loop of the same step, only")
    cli.add_argument("--rounds", type=int, default=3,
                     help="--overhead, --stream: alternate the cases this many times, take "
                          "the medians")
    cli.add_argument("--stream", action="store_true",
                     help="train_clip from a memory-mapped cache, resident and streamed, only")
    args = cli.parse_args()
    logging.disable(logging.WARNING)
    device = resolve_device(args.device)
    count = args.images or (512 if args.small else HAR_TRAIN_IMAGES)
    batch = args.batch or (32 if args.small else 256)
    size = 64 if args.small else 224
    hardware = describe()
    print(f"train benchmark — {hardware}; {count} images at {size} px, batch {batch}, "
          f"device {device}")
    images, labels = synthetic_cache(count, size)
    if args.overhead or args.stream:
        clip_config = cases(args.small, batch, args.compile)[0][1]
        compared = streamed(clip_config, images, labels, device, args.rounds) \
            if args.stream else \
            overhead(clip_config, images, labels, device, args.rounds)
        for label, result in compared:
            print(f"{label:<44} {result['images_per_s']:>9.0f} img/s "
                  f"{result['images_per_s'] / compared[0][1]['images_per_s']:>6.2f}×",
                  flush=True)
        if args.json:
            args.json.write_text(json.dumps({"hardware": hardware, "images": count,
                                             "image_size": size, "batch": batch,
                                             "device": str(device), "rows": [
                                                 {"case": label, **result}
                                                 for label, result in compared]}, indent=2))
        return
    rows = []
    selected = [(label, config) for label, config in cases(args.small, batch, args.compile)
                if not args.only or any(word in label for word in args.only)]
    for label, config in selected:
        result = measure(config, images, labels, device)
        rows.append({"case": label, "model": config.model, **result})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    clip_config = selected[0][1] if selected else cases(args.small, batch, False)[0][1]
    naive = naive_input_path(images, replace(clip_config, compile=False), device,
                             min(args.workers, len(os.sched_getaffinity(0))))
    rows.append({"case": "train_clip, naive JPEG + DataLoader input", "model": clip_config.model,
                 **naive})
    har_epoch = HAR_TRAIN_IMAGES
    print(f"{'case':<44} {'model':<20} {'img/s':>9} {'s/HAR epoch':>12} {'peak MB':>9}")
    for row in rows:
        row["har_epoch_s"] = har_epoch / row["images_per_s"]
        print(f"{row['case']:<44} {row['model']:<20} {row['images_per_s']:>9.0f} "
              f"{row['har_epoch_s']:>12.1f} {row['peak_memory_mb']:>9.0f}")
    if args.json:
        args.json.write_text(json.dumps({"hardware": hardware, "images": count,
                                         "image_size": size, "batch": batch,
                                         "device": str(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
