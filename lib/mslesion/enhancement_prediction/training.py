"""Training of the slice classifier and the participant net, in the paper's stages, on cached slice stacks.

Stages (Narayana et al. 2020, adapted):
  0. (this project's addition) the whole small VGG + head from scratch, Adam, BCE: a width-scaled VGG has no
     ImageNet base, so the frozen-base stage would have nothing to freeze. Skipped when the base is pretrained.
  1. convolutional base frozen, dense head trained with Adam + BCE on the bottleneck features (computed once).
  2. last convolutional block + head fine-tuned with SGD (small lr, high momentum), earlier blocks frozen.
  Every slice-classifier minibatch holds as many enhancing as non-enhancing slices. Then
  3. the participant net, Adam lr 1e-3 with dropout, on the training studies' slice scores. With
     ``recipe.participant_folds`` >= 2 (an option, not the default) those are out-of-fold scores: k slice
     classifiers, each trained the same way on the other folds' subjects, score the studies they never saw (the
     scores of studies a classifier trained on are not what it gives a new study). Measured 2026-12-07 on the
     randomised phantoms it made no reliable difference (shifted participant AUC 0.54-0.64 against 0.56 in-sample,
     depending on the folds; fixture 0.44 against 0.78): the slice scores hold too little participant-level
     signal for their read to matter (docs/enhancement_prediction.md).
The epoch of stages 0 and 2 with the best validation slice-wise AUC is kept; on the validation studies the
participant logit's temperature is fitted (calibration.py), then the Youden-optimal thresholds (slice-wise, and
participant-wise on the calibrated probability) are found.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .calibration import brier, fit_temperature, log_loss
from .networks import EnhancementPredictor
from .recipe import PredictionRecipe
from .roc import auc, figures, youden_threshold

logger = logging.getLogger(__name__)


@dataclass
class SliceSet:
    """The real (not padding) slices of some studies: inputs, labels, and which study each came from."""

    x: torch.Tensor          # (M, 3, S, S) float16
    y: torch.Tensor          # (M,) float32, 1 = enhancing
    study: np.ndarray        # (M,) index into the list of stacks

    @classmethod
    def of(cls, stacks: list[dict]) -> SliceSet:
        xs, ys, owners = [], [], []
        for i, stack in enumerate(stacks):
            real = np.asarray(stack["slice_index"]) >= 0
            xs.append(torch.from_numpy(np.asarray(stack["slices"])[real].astype(np.float16)))
            ys.append(torch.from_numpy(np.asarray(stack["slice_truth"])[real].astype(np.float32)))
            owners.append(np.full(int(real.sum()), i))
        size = stacks[0]["slices"].shape[-1] if stacks else 1
        x = torch.cat(xs) if xs else torch.zeros((0, 3, size, size), dtype=torch.float16)
        y = torch.cat(ys) if ys else torch.zeros(0)
        return cls(x, y, np.concatenate(owners) if owners else np.zeros(0, dtype=int))


def balanced_batches(labels: torch.Tensor, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of minibatches, each half enhancing and half non-enhancing slices. An epoch shows every enhancing
    slice once and as many non-enhancing ones, drawn afresh each epoch (the rare class sets the epoch's length)."""
    positives = np.flatnonzero(labels.numpy() > 0.5)
    negatives = np.flatnonzero(labels.numpy() <= 0.5)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("balanced minibatches need both enhancing and non-enhancing slices")
    pos = rng.permutation(positives)
    neg = rng.choice(negatives, size=pos.size, replace=negatives.size < pos.size)
    half = max(1, batch_size // 2)
    return [np.concatenate([pos[i:i + half], neg[i:i + half]]) for i in range(0, pos.size, half)]


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random left-right and front-back flips per slice (the masked lesions carry no handedness)."""
    flip_x = torch.rand(len(x), generator=generator) < 0.5
    flip_y = torch.rand(len(x), generator=generator) < 0.5
    x = x.clone()
    x[flip_x] = x[flip_x].flip(-2)
    x[flip_y] = x[flip_y].flip(-1)
    return x


@torch.no_grad()
def slice_scores(model: EnhancementPredictor, x: torch.Tensor, device: torch.device, batch: int = 128) -> np.ndarray:
    """Sigmoid scores of slices (M, 3, S, S)."""
    model.eval()
    out = [torch.sigmoid(model.slice_classifier(x[i:i + batch].to(device, torch.float32))).cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def study_scores(model: EnhancementPredictor, stacks: list[dict], device: torch.device) -> np.ndarray:
    """(studies, N) slice scores of whole stacks, padding slices included (they score an all-zero input)."""
    x = torch.from_numpy(np.stack([np.asarray(s["slices"]) for s in stacks]).astype(np.float16))
    flat = slice_scores(model, x.reshape(-1, *x.shape[2:]), device)
    return flat.reshape(len(stacks), -1)


@torch.no_grad()
def participant_logits(model: EnhancementPredictor, scores: np.ndarray, device: torch.device) -> np.ndarray:
    """The participant net's logit (before calibration) of (studies, N) slice scores."""
    model.eval()
    return model.participant(torch.as_tensor(scores, dtype=torch.float32, device=device)).cpu().numpy()


@torch.no_grad()
def participant_probability(model: EnhancementPredictor, scores: np.ndarray, device: torch.device) -> np.ndarray:
    """The calibrated, clipped participant-wise probability (what the task answers)."""
    model.eval()
    return model.probability(torch.as_tensor(scores, dtype=torch.float32, device=device)).cpu().numpy()


@dataclass
class TrainResult:
    model: EnhancementPredictor
    history: list[dict] = field(default_factory=list)
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0
    slices_per_second: float = 0.0


def _run_slice_stage(name: str, model: EnhancementPredictor, train: SliceSet, val: SliceSet | None,
                     optimizer: torch.optim.Optimizer, epochs: int, recipe: PredictionRecipe, device: torch.device,
                     rng: np.random.Generator, generator: torch.Generator, frozen: nn.Module | None,
                     history: list[dict], progress: Callable[[dict], None] | None,
                     start_from_current: bool = False) -> float:
    """Epochs of balanced minibatches; keeps the epoch with the best validation slice AUC. Returns slices/s."""
    classifier = model.slice_classifier
    best_auc, best_state = -1.0, None
    if start_from_current and val is not None and len(val.y):  # a stage that cannot improve keeps what it got
        best_auc = auc(val.y.numpy(), slice_scores(model, val.x, device))
        best_auc = best_auc if np.isfinite(best_auc) else -1.0
        best_state = copy.deepcopy(classifier.state_dict())
        history.append({"stage": name, "epoch": 0, "val_slice_auc": round(best_auc, 4)})
    seen, busy = 0, 0.0
    for epoch in range(1, epochs + 1):
        started = time.time()
        classifier.train()
        if frozen is not None:
            frozen.eval()
        losses = []
        for batch in balanced_batches(train.y, recipe.batch_size, rng):
            x = augment(train.x[batch], generator).to(device, torch.float32)
            y = train.y[batch].to(device)
            if frozen is not None:
                with torch.no_grad():
                    x = frozen(x)
                logits = classifier.head(classifier.features[len(frozen):](x))[:, 0]
            else:
                logits = classifier(x)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            seen += len(batch)
        busy += time.time() - started
        row = {"stage": name, "epoch": epoch, "loss": round(float(np.mean(losses)), 4)}
        if val is not None and len(val.y):
            row["val_slice_auc"] = round(auc(val.y.numpy(), slice_scores(model, val.x, device)), 4)
            score = row["val_slice_auc"] if np.isfinite(row["val_slice_auc"]) else -float(np.mean(losses))
            if score > best_auc:
                best_auc, best_state = score, copy.deepcopy(classifier.state_dict())
        row["seconds"] = round(time.time() - started, 1)
        history.append(row)
        logger.info("%s", row)
        if progress:
            progress({"history": history})
    if best_state is not None:
        classifier.load_state_dict(best_state)
    return seen / busy if busy else 0.0


def _train_head_on_bottleneck(model: EnhancementPredictor, train: SliceSet, recipe: PredictionRecipe,
                              device: torch.device, rng: np.random.Generator, history: list[dict]) -> None:
    """Stage 1: the dense head alone, on bottleneck features computed once by the frozen base."""
    classifier = model.slice_classifier
    classifier.eval()
    with torch.no_grad():
        features = torch.cat([classifier.bottleneck(train.x[i:i + 128].to(device, torch.float32)).cpu()
                              for i in range(0, len(train.x), 128)])
    optimizer = torch.optim.Adam(classifier.head.parameters(), lr=recipe.head_lr)
    for epoch in range(1, recipe.head_epochs + 1):
        classifier.head.train()
        losses = []
        for batch in balanced_batches(train.y, recipe.batch_size, rng):
            logits = classifier.head(features[batch].to(device))[:, 0]
            loss = nn.functional.binary_cross_entropy_with_logits(logits, train.y[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if epoch == recipe.head_epochs or epoch % 5 == 0:
            history.append({"stage": "head", "epoch": epoch, "loss": round(float(np.mean(losses)), 4)})


def train_participant(model: EnhancementPredictor, scores: np.ndarray, truth: np.ndarray, recipe: PredictionRecipe,
                      device: torch.device, seed: int) -> None:
    """The participant net on (studies, N) slice scores: Adam, BCE, dropout, full-batch (a handful of studies)."""
    torch.manual_seed(seed)
    net = model.participant
    x = torch.as_tensor(scores, dtype=torch.float32, device=device)
    y = torch.as_tensor(truth, dtype=torch.float32, device=device)
    optimizer = torch.optim.Adam(net.parameters(), lr=recipe.participant_lr)
    net.train()
    for _ in range(recipe.participant_epochs):
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()


def calibrate(model: EnhancementPredictor, study_slice_scores: np.ndarray, truth: np.ndarray,
              device: torch.device) -> dict:
    """Temperature scaling of the participant logit, fitted on these (validation) studies and stored in the model
    (rounded to fp16). Too few studies or one class keep temperature 1 (calibration.MIN_STUDIES)."""
    logits = participant_logits(model, study_slice_scores, device)
    before = participant_probability(model, study_slice_scores, device)
    model.temperature.fill_(fit_temperature(truth, logits))
    model.temperature.copy_(model.temperature.half().float())
    after = participant_probability(model, study_slice_scores, device)
    t = float(model.temperature)
    return {"method": "temperature scaling of the participant logit, fitted on validation studies",
            "temperature": t, "studies": int(truth.size),
            "log_loss_before": log_loss(truth, logits), "log_loss_after": log_loss(truth, logits, t),
            "brier_before": brier(truth, before)["brier"], "brier_after": brier(truth, after)["brier"]}


def set_thresholds(model: EnhancementPredictor, val_stacks: list[dict], device: torch.device,
                   calibrate_probability: bool = True) -> dict:
    """On validation studies: the participant logit's temperature (``calibrate_probability``), then the
    Youden-optimal slice-wise and participant-wise (calibrated probability) thresholds, stored in the model (rounded
    to what an fp16 checkpoint holds). Without both classes at a level, that level keeps its current threshold."""
    val = SliceSet.of(val_stacks)
    scores = slice_scores(model, val.x, device)
    per_study = study_scores(model, val_stacks, device)
    truth = np.array([int(s["study_truth"]) for s in val_stacks])
    calibration = calibrate(model, per_study, truth, device) if calibrate_probability else None
    probability = participant_probability(model, per_study, device)
    for buffer, labels, values in ((model.slice_threshold, val.y.numpy(), scores),
                                   (model.participant_threshold, truth, probability)):
        if 0 < labels.sum() < labels.size:
            buffer.fill_(youden_threshold(labels, values))
            buffer.copy_(buffer.half().float())
    out = {"slice": figures(val.y.numpy(), scores, float(model.slice_threshold)),
           "participant": figures(truth, probability, float(model.participant_threshold))}
    if calibration is not None:
        out["calibration"] = calibration
    return out


def train(recipe: PredictionRecipe, train_stacks: list[dict], val_stacks: list[dict], device: torch.device,
          seed: int = 0, model: EnhancementPredictor | None = None, from_scratch: bool = True,
          stages: tuple[str, ...] = ("scratch", "head", "finetune", "participant"),
          progress: Callable[[dict], None] | None = None) -> TrainResult:
    """The whole schedule on training stacks, epoch choice and thresholds on validation stacks."""
    started = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    model = (model or EnhancementPredictor(recipe)).to(device)
    initial = copy.deepcopy(model.state_dict()) if "participant" in stages else None
    train_set, val_set = SliceSet.of(train_stacks), SliceSet.of(val_stacks) if val_stacks else None
    if not (train_set.y > 0.5).any() or (train_set.y > 0.5).all():
        raise ValueError("the training studies need both enhancing and non-enhancing slices")
    classifier = model.slice_classifier
    history: list[dict] = []
    rates = []
    if from_scratch and "scratch" in stages and recipe.scratch_epochs:
        optimizer = torch.optim.Adam(classifier.parameters(), lr=recipe.scratch_lr)
        rates.append(_run_slice_stage("scratch", model, train_set, val_set, optimizer, recipe.scratch_epochs, recipe,
                                      device, rng, generator, None, history, progress))
    if "head" in stages and recipe.head_epochs:
        _train_head_on_bottleneck(model, train_set, recipe, device, rng, history)
    if "finetune" in stages and recipe.finetune_epochs:
        last = classifier.last_block()
        frozen = classifier.features[: len(classifier.features) - len(last)]
        for p in frozen.parameters():
            p.requires_grad_(False)
        params = [*last.parameters(), *classifier.head.parameters()]
        optimizer = torch.optim.SGD(params, lr=recipe.finetune_lr, momentum=recipe.finetune_momentum)
        rates.append(_run_slice_stage("finetune", model, train_set, val_set, optimizer, recipe.finetune_epochs,
                                      recipe, device, rng, generator, frozen, history, progress,
                                      start_from_current=True))
        for p in frozen.parameters():
            p.requires_grad_(True)
    if "participant" in stages:
        slice_stages = tuple(s for s in stages if s != "participant")
        scores = out_of_fold_scores(recipe, train_stacks, initial, device, seed, from_scratch, slice_stages)
        if scores is None:  # too few subjects (or one class per fold): the paper's in-sample scores
            scores = study_scores(model, train_stacks, device)
        truth = np.array([int(s["study_truth"]) for s in train_stacks])
        train_participant(model, scores, truth, recipe, device, seed)
    validation = set_thresholds(model, val_stacks, device) if val_stacks else {}
    model.eval()
    return TrainResult(model, history, validation, time.time() - started, float(np.mean(rates)) if rates else 0.0)


def out_of_fold_scores(recipe: PredictionRecipe, stacks: list[dict], initial: dict, device: torch.device, seed: int,
                       from_scratch: bool, stages: tuple[str, ...]) -> np.ndarray | None:
    """Slice scores (studies, N) of the training studies, each from a slice classifier that did not train on its
    subject: ``recipe.participant_folds`` classifiers on subject folds, each from the same starting weights and
    through the same stages. None where that cannot be done (fewer than 2 folds, or a fold whose other subjects
    lack enhancing or non-enhancing slices)."""
    subjects = sorted({s["subject"] for s in stacks})
    folds = min(recipe.participant_folds, len(subjects))
    if folds < 2:
        return None
    order = list(np.random.default_rng(seed).permutation(subjects))
    groups = [set(order[i::folds]) for i in range(folds)]
    fits = [[s for s in stacks if s["subject"] not in group] for group in groups]
    if any(not 0 < float(SliceSet.of(fit).y.mean()) < 1 for fit in fits):
        return None
    scores: dict[int, np.ndarray] = {}
    for k, (group, fit) in enumerate(zip(groups, fits, strict=True)):
        model = EnhancementPredictor(recipe).to(device)
        model.load_state_dict(initial)
        fold_model = train(recipe, fit, [], device, seed=seed + 1 + k, model=model, from_scratch=from_scratch,
                           stages=stages).model
        held = [i for i, s in enumerate(stacks) if s["subject"] in group]
        for i, row in zip(held, study_scores(fold_model, [stacks[i] for i in held], device), strict=True):
            scores[i] = row
        logger.info("participant fold %d/%d: %d studies scored out of fold", k + 1, folds, len(held))
    return np.stack([scores[i] for i in range(len(stacks))])


def predict(model: EnhancementPredictor, stacks: list[dict], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Participant-wise probabilities (studies,) and slice-wise scores (studies, N) of stacks."""
    scores = study_scores(model, stacks, device)
    return participant_probability(model, scores, device), scores
