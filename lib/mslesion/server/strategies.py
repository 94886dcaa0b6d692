"""Active learning: which unlabelled study a radiologist should correct next.

Every strategy hands out an image nobody else holds (mslesion.server.leases), so concurrent annotators get
different studies.

Strategies pick among the unlabelled images of a task's primary sequence (FLAIR for flair_lesion), never a
T1w or T2w companion. ``uncertainty`` ranks them by a flip test-time-augmentation score: how much the model's
lesion probability changes when the brain is mirrored, averaged over the voxels any pass calls lesion.
``review`` goes the other way: among the *labelled* images, the one whose label the model disagrees with most.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import replace

import torch
from monai.transforms import Compose
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.utils.others.generic import name_to_device

from ..metrics import dice
from ..studies import FLAIR, catalogue_of
from ..unet.evaluate import predicted_mask, study_margins
from ..unet.inference import amp_sliding_window
from ..unet.transforms import preprocess
from .leases import LEASES

logger = logging.getLogger(__name__)

MIRROR_AXES = (0, 1, 2)  # the study, then its mirror along each spatial axis


def unlabelled_images(datastore: Datastore, sequence: str = FLAIR) -> list[str]:
    """Ids of images of ``sequence`` that have no final label yet, in id order.

    The sequence comes from the datastore's catalogue: BIDS names for a folder, SeriesDescription patterns for a
    DICOMweb server (whose ids are SeriesInstanceUIDs)."""
    ids = set(datastore.get_unlabeled_images(DefaultLabelTag.FINAL.value))
    refs = catalogue_of(datastore).refs()
    return sorted(i for i in ids if (ref := refs.get(i)) is not None and ref.suffix == sequence)


@torch.no_grad()
def flip_uncertainty(infer_task, image_path: str, device: str = "cpu", mirror_axes=MIRROR_AXES) -> float:
    """Mean variance of the lesion probability across mirrored passes, over voxels any pass calls lesion."""
    data = Compose(infer_task.pre_transforms({"device": device}))({"image": image_path, "device": device})
    network = infer_task._get_network(device, data)
    inferer = amp_sliding_window(replace(infer_task.recipe, mirror_axes=tuple(mirror_axes)))
    image = data["image"][None].to(device)
    stack = torch.stack([torch.softmax(logits, dim=1)[:, 1] for logits in inferer.passes(image, network)])
    lesion = (stack > 0.5).any(dim=0)
    return float(stack.var(dim=0)[lesion].mean()) if lesion.any() else 0.0


class FlipUncertaintyScoring(ScoringMethod):
    """Scores unlabelled images of a task and stores the score in each image's info in the datastore."""

    def __init__(self, infer_task, key: str, max_images: int = 0):
        super().__init__(f"Flip test-time-augmentation uncertainty of {infer_task.recipe.task}")
        self.infer_task = infer_task
        self.key = key
        self.max_images = max_images

    def weights_version(self) -> float:
        path = self.infer_task.get_path()
        return os.path.getmtime(path) if path else 0.0

    def score(self, datastore: Datastore, image_ids: list[str], device: str) -> dict[str, float]:
        version, scores = self.weights_version(), {}
        for image_id in image_ids:
            info = datastore.get_image_info(image_id).get(self.key) or {}
            if info.get("weights_version") == version:
                scores[image_id] = info["score"]
                continue
            started = time.time()
            scores[image_id] = flip_uncertainty(self.infer_task, datastore.get_image_uri(image_id), device)
            datastore.update_image_info(
                image_id, {self.key: {"score": scores[image_id], "weights_version": version, "ts": int(time.time())}}
            )
            logger.info("%s: %s = %.5f (%.1f s)", image_id, self.key, scores[image_id], time.time() - started)
        return scores

    def __call__(self, request, datastore: Datastore):
        device = name_to_device(request.get("device", "cuda"))
        ids = unlabelled_images(datastore, self.infer_task.recipe.inputs[0])
        limit = int(request.get("max_images", self.max_images) or 0)
        return self.score(datastore, ids[:limit] if limit else ids, device)


class UncertaintyStrategy(Strategy):
    """The unlabelled image the model is least sure about, scored on demand for up to ``max_candidates``."""

    def __init__(self, scoring: FlipUncertaintyScoring, max_candidates: int = 8):
        super().__init__("Most uncertain unlabelled FLAIR (flip test-time augmentation)")
        self.scoring = scoring
        self.max_candidates = max_candidates

    def __call__(self, request, datastore: Datastore):
        ids = unlabelled_images(datastore, self.scoring.infer_task.recipe.inputs[0])
        limit = int(request.get("max_candidates", self.max_candidates))

        def most_uncertain(pool: list[str]) -> dict:
            candidates = pool if limit <= 0 else pool[:limit]
            scores = self.scoring.score(datastore, candidates, name_to_device(request.get("device", "cuda")))
            best = max(candidates, key=lambda i: scores[i])
            return {"id": best, "score": scores[best], "strategy": "uncertainty"}

        return LEASES.choose(ids, most_uncertain)


def labelled_images(datastore: Datastore, sequence: str = FLAIR) -> list[str]:
    """Ids of images of ``sequence`` that have a final label, in id order."""
    ids = set(datastore.get_labeled_images(DefaultLabelTag.FINAL.value))
    refs = catalogue_of(datastore).refs()
    return sorted(i for i in ids if (ref := refs.get(i)) is not None and ref.suffix == sequence)


@torch.no_grad()
def label_agreement(infer_task, image_path: str, label_path: str, device: str = "cpu") -> float:
    """Dice between a saved label's lesions (the task's values) and what the served model predicts, in the
    model's 1 mm space, with the post-processing stored in its weights."""
    recipe = infer_task.tuned_recipe()
    data = Compose(preprocess(recipe, with_label=True, device=device))({"image": image_path, "label": label_path})
    ((truth, margin),) = study_margins(infer_task._get_network(device, data), [data], recipe)  # as evaluation does
    return dice(truth > 0, predicted_mask(margin, recipe.threshold, recipe.min_lesion_voxels))


class ReviewStrategy(Strategy):
    """The labelled image whose saved label the model disagrees with most (lowest Dice): a second look at the
    corrections most likely to hold a mistake, or to teach the model most. Scores are kept in the image's info
    until the weights or the label change."""

    def __init__(self, infer_task, key: str = "flair_lesion_agreement", max_candidates: int = 8):
        super().__init__(f"Labelled {infer_task.recipe.inputs[0]} with the most disagreement between label and model")
        self.infer_task, self.key, self.max_candidates = infer_task, key, max_candidates

    def agreement(self, datastore: Datastore, image_id: str, device: str) -> float:
        label_path = datastore.get_label_uri(image_id, DefaultLabelTag.FINAL.value)
        weights_path = self.infer_task.get_path()
        version = [os.path.getmtime(weights_path) if weights_path else 0.0, os.path.getmtime(label_path)]
        info = datastore.get_image_info(image_id).get(self.key) or {}
        if info.get("version") == version:
            return info["dice"]
        value = label_agreement(self.infer_task, datastore.get_image_uri(image_id), label_path, device)
        datastore.update_image_info(image_id, {self.key: {"dice": value, "version": version}})
        return value

    def __call__(self, request, datastore: Datastore):
        ids = labelled_images(datastore, self.infer_task.recipe.inputs[0])
        limit = int(request.get("max_candidates", self.max_candidates) or 0)
        device = name_to_device(request.get("device", "cuda"))

        def least_agreement(pool: list[str]) -> dict:
            candidates = pool if limit <= 0 else pool[:limit]
            scores = {image_id: self.agreement(datastore, image_id, device) for image_id in candidates}
            worst = min(candidates, key=lambda i: scores[i])
            return {"id": worst, "score": 1 - scores[worst], "dice": scores[worst], "strategy": "review"}

        return LEASES.choose(ids, least_agreement)


class RandomStrategy(Strategy):
    def __init__(self, sequence: str = FLAIR):
        super().__init__(f"Random unlabelled {sequence}")
        self.sequence = sequence

    def __call__(self, request, datastore: Datastore):
        ids = unlabelled_images(datastore, self.sequence)
        return LEASES.choose(ids, lambda pool: {"id": random.choice(pool), "strategy": "random"})


class FirstStrategy(Strategy):
    def __init__(self, sequence: str = FLAIR):
        super().__init__(f"First unlabelled {sequence} in name order")
        self.sequence = sequence

    def __call__(self, request, datastore: Datastore):
        ids = unlabelled_images(datastore, self.sequence)
        return LEASES.choose(ids, lambda pool: {"id": pool[0], "strategy": "first"})
