"""The training loop shared by pretraining and fine-tuning of the lesion U-Nets.

Plain PyTorch around MONAI datasets and transforms: cached preprocessing, patch sampling with augmentation,
cross-entropy and Adam (the paper's recipe), AMP on a GPU, and validation with lesion-wise metrics after
every epoch. The best epoch by lesion-wise F1 is what gets returned for publishing.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.transforms import Compose

from .evaluate import score_studies
from .inference import autocast
from .recipes import Recipe
from .transforms import IMAGE, LABEL, lesion_indices, preprocess, training_augmentation

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    state: dict
    best_epoch: int
    validation: dict
    history: list[dict] = field(default_factory=list)
    patches_per_second: float = 0.0
    seconds: float = 0.0


def loss_function(name: str) -> torch.nn.Module:
    if name == "ce":
        return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)
    if name == "dice_ce":
        return DiceCELoss(to_onehot_y=True, softmax=True)
    raise ValueError(f"unknown loss '{name}': use 'ce' or 'dice_ce'")


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
    """Train ``network`` on labelled studies and return the weights of the best validation epoch."""
    torch.manual_seed(seed)
    started = time.time()
    preprocessing = preprocess(recipe, with_label=True, device="cpu")
    patches_per_pass = max(1, recipe.patches_per_study)
    train_set = CacheDataset(train_items, transform=Compose(preprocessing + lesion_indices()), progress=False)
    patch_set = Dataset(
        [train_set[i] for i in range(len(train_set))] * max(1, recipe.augmentations),
        transform=Compose(training_augmentation(recipe, patches_per_pass)),
    )
    loader = DataLoader(patch_set, batch_size=recipe.batch_size, shuffle=True, num_workers=0)
    val_studies = [
        {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
        for s in CacheDataset(val_items, transform=Compose(preprocessing), progress=False)
    ]

    network = network.to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    criterion = loss_function(loss)
    best = {"f1": -1.0}
    best_state, best_epoch, history, patches, train_seconds = copy.deepcopy(network.state_dict()), 0, [], 0, 0.0

    for epoch in range(1, recipe.epochs + 1):
        network.train()
        epoch_start, losses = time.time(), []
        for batch in loader:
            images, labels = batch[IMAGE].to(device), batch[LABEL].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                value = criterion(network(images), labels)
            value.backward()
            optimizer.step()
            losses.append(float(value.detach()))
            patches += images.shape[0]
        train_seconds += time.time() - epoch_start
        metrics = score_studies(network, val_studies, recipe)
        row = {
            "epoch": epoch,
            "epochs": recipe.epochs,
            "loss": round(sum(losses) / max(1, len(losses)), 5),
            "seconds": round(time.time() - epoch_start, 1),
            **{k: round(v, 4) for k, v in metrics.items()},
        }
        history.append(row)
        logger.info("epoch %d/%d %s", epoch, recipe.epochs, row)
        f1 = metrics.get("f1", 0.0)
        if not val_studies or f1 > best["f1"]:
            best, best_epoch = {"f1": f1, **metrics}, epoch
            best_state = copy.deepcopy(network.state_dict())
        if progress:
            progress({"epoch": epoch, "epochs": recipe.epochs, "history": history, "best_epoch": best_epoch})

    return FitResult(
        state=best_state,
        best_epoch=best_epoch,
        validation=best,
        history=history,
        patches_per_second=patches / train_seconds if train_seconds else 0.0,
        seconds=time.time() - started,
    )
