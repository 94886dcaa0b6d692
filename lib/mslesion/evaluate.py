"""Evaluation of a lesion U-Net on phantom cohorts: lesion-wise sensitivity, PPV, F1 and Dice."""

from __future__ import annotations

import torch
from monai.data import Dataset
from monai.transforms import Compose

from .inference import argmax_label, predict_logits
from .metrics import lesion_scores, mean_scores
from .recipes import Recipe
from .transforms import IMAGE, LABEL, preprocess


def score_studies(network: torch.nn.Module, studies, recipe: Recipe) -> dict:
    """Mean per-study lesion-wise scores over preprocessed studies (in the 1 mm space the model works in)."""
    scores = []
    for study in studies:
        label = argmax_label(predict_logits(network, study[IMAGE], recipe))
        scores.append(lesion_scores(study[LABEL][0].cpu().numpy(), label[0].cpu().numpy(), recipe.min_lesion_voxels))
    return {"studies": len(scores), **mean_scores(scores)} if scores else {}


def evaluate_on_cohort(network: torch.nn.Module, items: list[dict], recipe: Recipe, device: torch.device) -> dict:
    """Lesion-wise scores of a network on labelled studies given as paths."""
    network = network.to(device).eval()
    return score_studies(network, Dataset(items, transform=Compose(preprocess(recipe, True, device))), recipe)
