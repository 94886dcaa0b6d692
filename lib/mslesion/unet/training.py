"""The training loop shared by pretraining and fine-tuning of the lesion U-Nets.

Plain PyTorch around MONAI datasets and transforms: cached preprocessing, per-lesion patch sampling with wide
augmentation, Dice + cross-entropy, AdamW with a poly learning-rate curve, AMP on a GPU, and validation with pooled
lesion-wise counts after every epoch. The best epoch by the moving average of lesion-wise F1 is what gets returned
for publishing.

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
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import Compose
from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..metrics import pooled_scores
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
    stopped: bool = False  # interrupted before the planned steps (the last checkpoint holds the state)


def loss_function(name: str) -> torch.nn.Module:
    """``dice_ce``: soft Dice on the lesion channel only, pooled over the whole batch (a patch without lesion does
    not make Dice undefined or push towards empty answers), plus cross-entropy over both classes. ``ce`` alone."""
    if name == "ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    raise ValueError(f"unknown loss '{name}': use 'ce' or 'dice_ce'")


PLAN_AFTER_BATCHES = 3


def poly_schedule(optimizer: torch.optim.Optimizer, plan: dict, power: float = 0.9):
    """nnU-Net's learning rate curve: lr * (1 - step / total) ** 0.9, over ``plan["total"]`` steps (a dict, so a
    budgeted run can set the total once it has measured its step rate)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1 - min(step, plan["total"]) / max(1, plan["total"])) ** power
    )


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
    """Validation counts of the ranks' shares as one cohort's pooled scores."""
    parts = [p for p in parts if p]
    if not parts:
        return {}
    counts = {k: sum(p[k] for p in parts) for k in parts[0]}
    return pooled_scores(counts)


def fit(
    recipe: Recipe,
    network: torch.nn.Module,
    train_items: list[dict],
    val_items: list[dict],
    device: torch.device,
    lr: float,
    loss: str | None = None,
    progress: Callable[[dict], None] | None = None,
    seed: int = 0,
    total_steps: int | None = None,
    plan_steps: Callable[[float], int] | None = None,
    validation_share: float | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> FitResult:
    """Train ``network`` on labelled studies and return the weights of the best validation epoch.

    AdamW with the poly learning-rate curve over ``total_steps`` (default: the recipe's epochs of the loader's
    steps). After every epoch the validation studies are scored with pooled lesion counts, and the best epoch is
    picked on an exponential moving average of that F1 (a single lucky epoch on few studies does not win).
    ``plan_steps`` (a time-budgeted run) is given the measured steps per second, patch making included, after the
    first PLAN_AFTER_BATCHES loaded batches, and returns the run's total steps; the curve is planned over those.
    With ``validation_share`` (a budgeted run) validation after the first epoch happens every k epochs, k chosen
    so that it takes about that share of the time; the last epoch is always validated.
    ``checkpoint`` receives the whole training state (weights, optimiser, schedule, step, RNG, best) after every
    epoch and when ``stop`` turns true; ``resume`` continues from such a state on the same curve.

    In a process group every rank calls this with the same items and its own ``device``; ``progress`` and
    ``checkpoint`` are called on rank 0 only.
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
    full, rest = divmod(len(patch_set), recipe.batch_size)  # loaded batches of studies, each cut into steps
    steps_per_epoch = full * patches_per_pass + math.ceil(rest * patches_per_pass / recipe.batch_size)
    steps_per_epoch = int(distributed.reduce(steps_per_epoch, "min", device))  # equal by construction
    plan = {"total": int(total_steps or recipe.epochs * steps_per_epoch)}
    planned_before = bool(resume and 0 < resume.get("total_steps", 0) < 10**9)
    if planned_before:
        plan["total"] = int(resume["total_steps"])
    elif plan_steps:
        plan["total"] = 10**9  # until measured: the curve stays at its start
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    schedule = poly_schedule(optimizer, plan)
    criterion = loss_function(loss or recipe.loss)
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    state = {"epoch": 0, "step": 0, "best": {}, "best_ema": -1.0, "best_epoch": 0, "ema": None, "history": [],
             "best_state": copy.deepcopy(network.state_dict()), "patches": 0, "train_seconds": 0.0}
    if resume:
        network.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        state.update({k: resume[k] for k in state if k in resume})
        torch.set_rng_state(resume["torch_rng"])
    any_validation = bool(distributed.reduce(len(val_studies), "sum", device))
    def snapshot() -> dict:
        return {**state, "model": copy.deepcopy(network.state_dict()), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(), "total_steps": plan["total"]}

    stopped = False
    while state["step"] < plan["total"] and not stopped:
        total_epochs = math.ceil(plan["total"] / max(1, steps_per_epoch)) if plan["total"] < 10**9 else None
        epoch = state["epoch"] + 1
        model.train()
        epoch_start, losses = time.time(), []
        measure_from, measured = (time.time(), state["step"]), 0
        for batch in loader:
            for images, labels in patch_batches(batch, recipe.batch_size, device):
                if state["step"] >= plan["total"]:
                    break
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    value = criterion(model(images), labels)
                scaler.scale(value).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                losses.append(float(value.detach()))
                state["patches"] += images.shape[0]
                state["step"] += 1
            measured += 1
            if plan_steps and plan["total"] == 10**9 and measured == min(PLAN_AFTER_BATCHES, len(loader)):
                # whole loaded batches, so patch making (most of a CPU step) is in the rate
                plan["total"] = max(state["step"] + 1, int(plan_steps(
                    (state["step"] - measure_from[1]) / (time.time() - measure_from[0]))))
                logger.info("planned %d steps", plan["total"])
            stopped = bool(distributed.from_main(bool(stop and stop())))
            if stopped or state["step"] >= plan["total"]:
                break
        train_seconds = time.time() - epoch_start
        state["train_seconds"] += train_seconds
        if stopped and state["step"] < plan["total"]:  # an interrupted epoch is not validated; resume goes on
            if checkpoint and rank == 0:
                checkpoint(snapshot())
            break
        last = state["step"] >= plan["total"]
        if not last and (epoch - 1) % state.get("validate_every", 1):
            state["epoch"] = epoch
            continue
        # the bare network, not the DDP wrapper: ranks validate different numbers of studies without collectives
        validation_start = time.time()
        metrics = combine_scores(distributed.gather(score_studies(network, val_studies, recipe)))
        if validation_share and epoch == 1:  # validate every k epochs, so validation takes about this share
            spent = distributed.reduce(time.time() - validation_start, "max", device)
            state["validate_every"] = max(1, math.ceil(spent / (validation_share * max(1e-6, train_seconds))))
        mean_loss = distributed.reduce(sum(losses) / max(1, len(losses)), "sum", device) / world
        f1 = metrics.get("f1", 0.0)
        state["ema"] = f1 if state["ema"] is None else recipe.validation_ema * state["ema"] + (
            1 - recipe.validation_ema) * f1
        row = {
            "epoch": epoch,
            "epochs": total_epochs,
            "step": state["step"],
            "lr": round(schedule.get_last_lr()[0], 7),
            "loss": round(mean_loss, 5),
            "seconds": round(time.time() - epoch_start, 1),
            "f1_ema": round(state["ema"], 4),
            **{k: round(v, 4) for k, v in metrics.items()},
        }
        state["history"].append(row)
        state["epoch"] = epoch
        logger.info("epoch %d/%d %s", epoch, total_epochs, row)
        if distributed.from_main(not any_validation or state["ema"] > state["best_ema"]):
            state["best"], state["best_epoch"], state["best_ema"] = {**metrics, "f1_ema": state["ema"]}, epoch, \
                state["ema"]
            state["best_state"] = copy.deepcopy(network.state_dict())
        if progress and rank == 0:
            progress({"epoch": epoch, "epochs": total_epochs, "history": state["history"],
                      "best_epoch": state["best_epoch"]})
        if checkpoint and rank == 0:
            checkpoint(snapshot())
    if plan_steps and plan["total"] == 10**9:  # ended before measuring (a stop): nothing planned yet
        plan["total"] = state["step"]

    best_state, steps, patches = state["best_state"], state["step"], state["patches"]
    rank_steps = [int(s) for s in distributed.gather(steps)]
    rank_digests = distributed.gather(state_digest(best_state))
    if len(set(rank_digests)) > 1:  # DDP keeps replicas identical; anything else is a bug, not a model to publish
        raise RuntimeError(f"the ranks ended with different weights (sha256 {rank_digests}); nothing is published")
    if world > 1:
        logger.info("rank %d/%d trained %d steps (%d patches) on %d studies", rank, world, steps, patches,
                    len(my_train))
    total_patches = distributed.reduce(patches, "sum", device)
    slowest = distributed.reduce(state["train_seconds"], "max", device)
    return FitResult(
        state=best_state,
        best_epoch=state["best_epoch"],
        validation=state["best"],
        history=state["history"],
        patches_per_second=total_patches / slowest if slowest else 0.0,
        seconds=time.time() - started,
        world_size=world,
        rank_steps=rank_steps,
        rank_digests=rank_digests,
        stopped=stopped and steps < plan["total"],
    )
