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
from .evaluate import score_studies_at
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


def curve_fraction(plan: dict, step: int) -> float:
    """How far along its learning-rate curve a run is at ``step`` (0 start, 1 end). A re-planned run (``replan``)
    goes on from the point it had reached (``from_fraction`` at ``from_step``) to its new total."""
    start, reached = plan.get("from_step", 0), plan.get("from_fraction", 0.0)
    return min(1.0, reached + (1 - reached) * max(0, step - start) / max(1, plan["total"] - start))


def replan(plan: dict, step: int, total: int) -> None:
    """Moves the end of the curve to ``total`` steps, continuing from where ``step`` is on it (no jump in lr)."""
    plan.update(from_fraction=curve_fraction(plan, step), from_step=step, total=max(step + 1, int(total)))


def poly_schedule(optimizer: torch.optim.Optimizer, plan: dict, power: float = 0.9):
    """nnU-Net's learning rate curve: lr * (1 - step / total) ** 0.9, over ``plan["total"]`` steps (a dict, so a
    budgeted run can set the total once it has measured its step rate, and move it when the rate changes)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - curve_fraction(plan, step)) ** power)


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


#: The best epoch is picked on the pooled validation F1 at the best of these thresholds (and the recipe's): the
#: batch-norm U-Nets are over-confident on whole studies, their tuned thresholds are 0.98-0.995, and F1 at p = 0.5
#: swung from 0.06 to 0.34 between epochs of one run (enhancement, 2026-12-07) while the network improved.
#: 0.999: new_lesion trained on ms_relapse selected 0.995, the old top, at every validation epoch.
SELECTION_THRESHOLDS = (0.5, 0.9, 0.98, 0.995, 0.999)
UNPLANNED = 10**9  # a budgeted run's total before its step rate is measured: the curve stays at its start
#: A budgeted run re-plans its total after a validation when the measured rate moves the end by more than this
#: share of the steps left (another job started or ended on the machine), over at least REPLAN_MIN_STEPS steps.
REPLAN_TOLERANCE = 0.05
REPLAN_MIN_STEPS = 200


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
    first PLAN_AFTER_BATCHES loaded batches, and returns how many more steps fit; the curve is planned over those.
    After each validation it is asked again with the rate since the last plan, and the rest of the curve is
    stretched or compressed to the new total (the load of a shared machine changes; a resumed run gets a new
    budget).
    With ``validation_share`` (a budgeted run) validation after the first epoch happens every k epochs, k chosen
    so that it takes about that share of the time; the last epoch is always validated.
    ``checkpoint`` receives the whole training state (weights, optimiser, schedule, step, RNG, best) after every
    validated epoch and when ``stop`` turns true; ``resume`` continues from such a state on the same curve.

    In a process group every rank calls this with the same items and its own ``device``; ``progress`` and
    ``checkpoint`` are called on rank 0 only.
    """
    run = TrainingRun(recipe, network, train_items, val_items, device, lr, loss, seed, total_steps, plan_steps,
                      resume)
    stopped = False
    while run.state["step"] < run.plan["total"] and not stopped:
        epoch = run.state["epoch"] + 1
        epoch_start = time.time()
        losses, train_seconds, stopped = run.train_epoch(plan_steps, stop)
        if stopped and run.state["step"] < run.plan["total"]:  # an interrupted epoch is not validated; resume
            if checkpoint and run.rank == 0:
                checkpoint(run.snapshot())
            break
        last = run.state["step"] >= run.plan["total"]
        if not last and (epoch - 1) % run.state.get("validate_every", 1):
            run.state["epoch"] = epoch
            continue
        run.validate(epoch, losses, epoch_start, train_seconds, validation_share)
        if progress and run.rank == 0:
            progress({"epoch": epoch, "epochs": run.total_epochs(), "history": run.state["history"],
                      "best_epoch": run.state["best_epoch"]})
        if plan_steps and not last:
            run.replan(plan_steps)
        if checkpoint and run.rank == 0:
            checkpoint(run.snapshot())
    if plan_steps and run.plan["total"] == UNPLANNED:  # ended before measuring (a stop): nothing planned yet
        run.plan["total"] = run.state["step"]
    return run.result(stopped)


class TrainingRun:
    """One training of ``fit``: its data, optimiser, learning-rate curve and state (what a checkpoint holds)."""

    def __init__(self, recipe: Recipe, network: torch.nn.Module, train_items: list[dict], val_items: list[dict],
                 device: torch.device, lr: float, loss: str | None, seed: int, total_steps: int | None,
                 plan_steps: Callable[[float], int] | None, resume: dict | None):
        self.rank, self.world = distributed.rank(), distributed.world_size()
        torch.manual_seed(seed + self.rank)  # ranks draw different patches; DDP gives them rank 0's initial weights
        self.started = time.time()
        self.recipe, self.network, self.device = recipe, network, device
        self._load_data(train_items, val_items)
        self.model = network.to(device)
        if self.world > 1:
            self.model = DistributedDataParallel(
                network, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
            )
        self.plan = {"total": int(total_steps or recipe.epochs * self.steps_per_epoch)}
        if resume and 0 < resume.get("total_steps", 0) < UNPLANNED:
            self.plan.update(resume.get("plan", {}), total=int(resume["total_steps"]))
        elif plan_steps:
            self.plan["total"] = UNPLANNED
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
        self.schedule = poly_schedule(self.optimizer, self.plan)
        self.criterion = loss_function(loss or recipe.loss)
        self.dtype = amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.state = {"epoch": 0, "step": 0, "best": {}, "best_ema": -1.0, "best_epoch": 0, "ema": None,
                      "history": [], "best_state": copy.deepcopy(network.state_dict()), "patches": 0,
                      "train_seconds": 0.0}
        if resume:
            network.load_state_dict(resume["model"])
            self.optimizer.load_state_dict(resume["optimizer"])
            self.schedule.load_state_dict(resume["schedule"])
            self.state.update({k: resume[k] for k in self.state if k in resume})
            torch.set_rng_state(resume["torch_rng"])
        self.any_validation = bool(distributed.reduce(len(self.val_studies), "sum", device))
        self.rate_since = (self.state["step"], self.state["train_seconds"])  # where the step rate is measured from

    def replan(self, plan_steps: Callable[[float], int]) -> None:
        """Re-plans the curve's end from the training rate since the last plan (see fit)."""
        steps = self.state["step"] - self.rate_since[0]
        seconds = self.state["train_seconds"] - self.rate_since[1]
        left = self.plan["total"] - self.state["step"]
        if steps < REPLAN_MIN_STEPS or seconds <= 0 or left <= 0:
            return
        total = self.state["step"] + int(distributed.reduce(int(plan_steps(steps / seconds)), "min", self.device))
        if abs((total - self.state["step"]) - left) > REPLAN_TOLERANCE * left:
            replan(self.plan, self.state["step"], total)
            logger.info("re-planned to %d steps", self.plan["total"])
        self.rate_since = (self.state["step"], self.state["train_seconds"])

    def _load_data(self, train_items: list[dict], val_items: list[dict]) -> None:
        """This rank's cached training studies, its patch loader and its validation studies on the device."""
        recipe, device = self.recipe, self.device
        preprocessing = preprocess(recipe, with_label=True, device="cpu")
        per_pass = max(1, recipe.patches_per_study)
        self.my_train = distributed.shard(train_items, self.rank, self.world)
        train_set = CacheDataset(self.my_train, transform=Compose(preprocessing + lesion_indices(recipe)),
                                 progress=False)
        patch_set = Dataset(
            [train_set[i] for i in range(len(train_set))] * max(1, recipe.augmentations),
            transform=Compose(training_augmentation(recipe, per_pass)),
        )
        self.loader = patch_loader(patch_set, recipe, device)
        my_val = val_items[self.rank::self.world]
        self.val_studies = [
            {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
            for s in (CacheDataset(my_val, transform=Compose(preprocessing), progress=False) if my_val else [])
        ]
        full, rest = divmod(len(patch_set), recipe.batch_size)  # loaded batches of studies, each cut into steps
        steps = full * per_pass + math.ceil(rest * per_pass / recipe.batch_size)
        self.steps_per_epoch = int(distributed.reduce(steps, "min", device))  # equal by construction

    def total_epochs(self) -> int | None:
        total = self.plan["total"]
        return math.ceil(total / max(1, self.steps_per_epoch)) if total < UNPLANNED else None

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            value = self.criterion(self.model(images), labels)
        self.scaler.scale(value).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        self.state["patches"] += images.shape[0]
        self.state["step"] += 1
        return float(value.detach())

    def train_epoch(self, plan_steps, stop) -> tuple[list[float], float, bool]:
        """One pass over the loader (or up to the planned total, or a stop): losses, seconds, whether stopped."""
        self.model.train()
        state, plan = self.state, self.plan
        started, losses, stopped = time.time(), [], False
        measure_from, measured = (time.time(), state["step"]), 0
        for batch in self.loader:
            for images, labels in patch_batches(batch, self.recipe.batch_size, self.device):
                if state["step"] >= plan["total"]:
                    break
                losses.append(self.step(images, labels))
            measured += 1
            if plan_steps and plan["total"] == UNPLANNED and measured == min(PLAN_AFTER_BATCHES, len(self.loader)):
                # whole loaded batches, so patch making (most of a CPU step) is in the rate
                rate = (state["step"] - measure_from[1]) / (time.time() - measure_from[0])
                plan["total"] = state["step"] + max(1, int(plan_steps(rate)))
                logger.info("planned %d steps", plan["total"])
            stopped = bool(distributed.from_main(bool(stop and stop())))
            if stopped or state["step"] >= plan["total"]:
                break
        seconds = time.time() - started
        state["train_seconds"] += seconds
        if self.world > 1:  # batch-norm running statistics are per rank; DDP syncs them only at the next forward
            for buffer in self.network.buffers():
                torch.distributed.broadcast(buffer, 0)
        return losses, seconds, stopped

    def validate(self, epoch: int, losses: list[float], epoch_start: float, train_seconds: float,
                 validation_share: float | None) -> None:
        """Pooled validation scores, the EMA'd best pick and the history row of one epoch."""
        state, recipe, device = self.state, self.recipe, self.device
        started = time.time()
        # the bare network, not the DDP wrapper: ranks validate different numbers of studies without collectives
        thresholds = sorted({recipe.threshold, *SELECTION_THRESHOLDS})
        gathered = distributed.gather(score_studies_at(self.network, self.val_studies, recipe, thresholds))
        by_threshold = {t: combine_scores([counts[t] for counts in gathered]) for t in thresholds}
        metrics = by_threshold[recipe.threshold]
        selection = max(thresholds, key=lambda t: by_threshold[t].get("f1", 0.0))
        if validation_share and epoch == 1:  # validate every k epochs, so validation takes about this share
            spent = distributed.reduce(time.time() - started, "max", device)
            state["validate_every"] = max(1, math.ceil(spent / (validation_share * max(1e-6, train_seconds))))
        mean_loss = distributed.reduce(sum(losses) / max(1, len(losses)), "sum", device) / self.world
        f1 = by_threshold[selection].get("f1", 0.0)
        ema = f1 if state["ema"] is None else recipe.validation_ema * state["ema"] + (1 - recipe.validation_ema) * f1
        state["ema"] = ema
        row = {"epoch": epoch, "epochs": self.total_epochs(), "step": state["step"],
               "lr": round(self.schedule.get_last_lr()[0], 7), "loss": round(mean_loss, 5),
               "seconds": round(time.time() - epoch_start, 1), "f1_ema": round(ema, 4),
               "selection_threshold": selection, "f1_selection": round(f1, 4),
               **{k: round(v, 4) for k, v in metrics.items()}}
        state["history"].append(row)
        state["epoch"] = epoch
        logger.info("epoch %d/%s %s", epoch, self.total_epochs(), row)
        if distributed.from_main(not self.any_validation or ema > state["best_ema"]):
            state["best"], state["best_epoch"], state["best_ema"] = {**metrics, "f1_ema": ema}, epoch, ema
            state["best_state"] = copy.deepcopy(self.network.state_dict())

    def snapshot(self) -> dict:
        return {**self.state, "model": copy.deepcopy(self.network.state_dict()),
                "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "torch_rng": torch.get_rng_state(), "total_steps": self.plan["total"], "plan": dict(self.plan)}

    def result(self, stopped: bool) -> FitResult:
        state, device = self.state, self.device
        best_state, steps, patches = state["best_state"], state["step"], state["patches"]
        rank_steps = [int(s) for s in distributed.gather(steps)]
        rank_digests = distributed.gather(state_digest(best_state))
        if len(set(rank_digests)) > 1:  # DDP keeps replicas identical; anything else is a bug, not a model
            raise RuntimeError(f"the ranks ended with different weights (sha256 {rank_digests}); nothing is published")
        if self.world > 1:
            logger.info("rank %d/%d trained %d steps (%d patches) on %d studies", self.rank, self.world, steps,
                        patches, len(self.my_train))
        total_patches = distributed.reduce(patches, "sum", device)
        slowest = distributed.reduce(state["train_seconds"], "max", device)
        return FitResult(
            state=best_state, best_epoch=state["best_epoch"], validation=state["best"], history=state["history"],
            patches_per_second=total_patches / slowest if slowest else 0.0, seconds=time.time() - self.started,
            world_size=self.world, rank_steps=rank_steps, rank_digests=rank_digests,
            stopped=stopped and steps < self.plan["total"],
        )
