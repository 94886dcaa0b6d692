"""The training loop shared by pretraining and fine-tuning of the lesion U-Nets.

Plain PyTorch around MONAI datasets and transforms: cached preprocessing, patch sampling with augmentation,
cross-entropy and Adam (the paper's recipe), AMP on a GPU, and validation with lesion-wise metrics after
every epoch. The best epoch by lesion-wise F1 is what gets returned for publishing.

Inside a torch.distributed process group (torchrun, or :func:`mslesion.distributed.spawn`) the same loop is data
parallel: each rank caches and trains on its own share of the studies (equal shares, so every rank runs the same
number of steps), DistributedDataParallel averages the gradients, the validation studies are split over the ranks
and their scores gathered, and rank 0's decision of the best epoch is the one every rank follows. Only the caller's
rank 0 should publish (``distributed.is_main()``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import Compose
from torch.nn.parallel import DistributedDataParallel

from . import distributed
from .evaluate import score_studies
from .recipes import Recipe
from .transforms import IMAGE, LABEL, lesion_indices, preprocess, training_augmentation

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    state: dict
    best_epoch: int
    validation: dict
    history: list[dict] = field(default_factory=list)
    patches_per_second: float = 0.0  # all ranks together: patches of every rank over the slowest rank's time
    seconds: float = 0.0
    world_size: int = 1
    rank_steps: list[int] = field(default_factory=list)  # optimiser steps each rank ran, in rank order
    rank_digests: list[str] = field(default_factory=list)  # sha256 of each rank's returned weights (all equal)


def loss_function(name: str) -> torch.nn.Module:
    if name == "ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    raise ValueError(f"unknown loss '{name}': use 'ce' or 'dice_ce'")


def state_digest(state: dict) -> str:
    """sha256 over a state dict's names and bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on a GPU: bf16 where the GPU has it (no loss scaling needed), fp16 before that; none on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def patch_loader(patch_set: Dataset, recipe: Recipe, device: torch.device) -> DataLoader:
    """Batches of augmented patches. On a GPU, worker processes augment the next batches while the GPU trains on
    this one (pinned memory for asynchronous copies, workers kept across epochs); on the CPU the training itself
    needs the cores, so patches are made in the training process."""
    if device.type != "cuda":
        return DataLoader(patch_set, batch_size=recipe.batch_size, shuffle=True, num_workers=0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    workers = max(1, min(8, (os.cpu_count() or 2) // per_node - 1))
    return DataLoader(patch_set, batch_size=recipe.batch_size, shuffle=True, num_workers=workers, pin_memory=True,
                      persistent_workers=True, prefetch_factor=4)


def patch_batches(batch: dict, batch_size: int, device: torch.device):
    """Optimizer steps of ``batch_size`` patches from one loaded batch of studies.

    The loader collates every patch cropped from its ``batch_size`` studies (``patches_per_study`` each) into one
    tensor; stepping on all of them at once would make one optimizer step of 64 (CPU schedule) or 240 (paper
    schedule, 96^3) patches: a handful of steps per epoch, and more GPU memory than a step needs. The patches are
    shuffled across the loaded studies and cut into steps of ``batch_size``. Every rank of a process group loads
    equal shares, so all take the same number of steps."""
    images, labels = batch[IMAGE], batch[LABEL]
    order = torch.randperm(images.shape[0])
    for chunk in order.split(max(1, batch_size)):
        yield images[chunk].to(device, non_blocking=True), labels[chunk].to(device, non_blocking=True)


def combine_scores(parts: list[dict]) -> dict:
    """Validation scores of the ranks' shares as one: counts summed, per-study means weighted by study count."""
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return parts[0] if parts else {}
    total = sum(p["studies"] for p in parts)
    out: dict = {}
    for key, value in parts[0].items():
        if isinstance(value, int):
            out[key] = sum(p[key] for p in parts)
        else:
            out[key] = sum(p[key] * p["studies"] for p in parts) / total
    return out


def fit(
    recipe: Recipe,
    network: torch.nn.Module,
    train_items: list[dict],
    val_items: list[dict],
    device: torch.device,
    lr: float,
    loss: str = "ce",
    progress: Callable[[dict], None] | None = None,
    seed: int = 0,
) -> FitResult:
    """Train ``network`` on labelled studies and return the weights of the best validation epoch.

    In a process group every rank calls this with the same items and its own ``device``; ``progress`` is called on
    rank 0 only.
    """
    rank, world = distributed.rank(), distributed.world_size()
    torch.manual_seed(seed + rank)  # ranks draw different patches; DDP gives them rank 0's initial weights
    started = time.time()
    preprocessing = preprocess(recipe, with_label=True, device="cpu")
    patches_per_pass = max(1, recipe.patches_per_study)
    my_train, my_val = distributed.shard(train_items, rank, world), val_items[rank::world]
    train_set = CacheDataset(my_train, transform=Compose(preprocessing + lesion_indices()), progress=False)
    patch_set = Dataset(
        [train_set[i] for i in range(len(train_set))] * max(1, recipe.augmentations),
        transform=Compose(training_augmentation(recipe, patches_per_pass)),
    )
    loader = patch_loader(patch_set, recipe, device)
    val_studies = [
        {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for s in (CacheDataset(my_val, transform=Compose(preprocessing), progress=False) if my_val else [])
    ]

    model = network.to(device)
    if world > 1:
        model = DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
        )
    steps_per_epoch = int(distributed.reduce(len(loader), "min", device))  # equal by construction; never more
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = loss_function(loss)
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    best = {"f1": -1.0}
    best_state, best_epoch, history = copy.deepcopy(network.state_dict()), 0, []
    patches, steps, train_seconds = 0, 0, 0.0
    any_validation = bool(distributed.reduce(len(val_studies), "sum", device))

    for epoch in range(1, recipe.epochs + 1):
        model.train()
        epoch_start, losses = time.time(), []
        for step, batch in enumerate(loader):
            if step >= steps_per_epoch:
                break
            for images, labels in patch_batches(batch, recipe.batch_size, device):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    value = criterion(model(images), labels)
                scaler.scale(value).backward()
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(value.detach()))
                patches += images.shape[0]
                steps += 1
        train_seconds += time.time() - epoch_start
        # the bare network, not the DDP wrapper: ranks validate different numbers of studies without collectives
        metrics = combine_scores(distributed.gather(score_studies(network, val_studies, recipe)))
        mean_loss = distributed.reduce(sum(losses) / max(1, len(losses)), "sum", device) / world
        row = {
            "epoch": epoch,
            "epochs": recipe.epochs,
            "loss": round(mean_loss, 5),
            "seconds": round(time.time() - epoch_start, 1),
            **{k: round(v, 4) for k, v in metrics.items()},
        }
        history.append(row)
        logger.info("epoch %d/%d %s", epoch, recipe.epochs, row)
        f1 = metrics.get("f1", 0.0)
        if distributed.from_main(not any_validation or f1 > best["f1"]):
            best, best_epoch = {"f1": f1, **metrics}, epoch
            best_state = copy.deepcopy(network.state_dict())
        if progress and rank == 0:
            progress({"epoch": epoch, "epochs": recipe.epochs, "history": history, "best_epoch": best_epoch})

    rank_steps = [int(s) for s in distributed.gather(steps)]
    rank_digests = distributed.gather(state_digest(best_state))
    if len(set(rank_digests)) > 1:  # DDP keeps replicas identical; anything else is a bug, not a model to publish
        raise RuntimeError(f"the ranks ended with different weights (sha256 {rank_digests}); nothing is published")
    if world > 1:
        logger.info("rank %d/%d trained %d steps (%d patches) on %d studies", rank, world, steps, patches,
                    len(my_train))
    total_patches = distributed.reduce(patches, "sum", device)
    slowest = distributed.reduce(train_seconds, "max", device)
    return FitResult(
        state=best_state,
        best_epoch=best_epoch,
        validation=best,
        history=history,
        patches_per_second=total_patches / slowest if slowest else 0.0,
        seconds=time.time() - started,
        world_size=world,
        rank_steps=rank_steps,
        rank_digests=rank_digests,
    )
