"""The lesion U-Net pipeline that flair_lesion (and later new_lesion, enhancement) share.

A task module says only what is its own (its recipe, its inputs); this module holds the TaskConfig,
InferTask and TrainTask they all use.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from .. import distributed, weights
from ..answers import write_label
from ..report import lesion_report
from ..studies import BASELINE, StudyError, earlier_session, parse_image_id
from ..unet.evaluate import retuned_for_site
from ..unet.inference import amp_sliding_window
from ..unet.networks import lesion_unet
from ..unet.postprocess import LesionLabeld, RestoreGeometryd, requested
from ..unet.recipes import Recipe, for_request, from_checkpoint, postprocessing
from ..unet.training import fit
from ..unet.transforms import IMAGE, preprocess
from ..vocabulary import model_labels
from .base import ReportsGpuPeak, StatsFileTrainTask

logger = logging.getLogger(__name__)


class LesionSegmentationInfer(ReportsGpuPeak, BasicInferTask):
    """Sliding-window U-Net inference of one task's lesions, answered on the opened image's own grid."""

    def __init__(self, recipe: Recipe, paths: list[str], network: torch.nn.Module, description: str):
        super().__init__(
            path=paths,
            network=network,
            type=InferType.SEGMENTATION,
            labels=model_labels(recipe.task),
            dimension=3,
            description=description,
            roi_size=recipe.infer_roi,
            # 0: the value tuned on validation and stored with the weights being served
            config={"min_lesion_voxels": 0, "threshold": 0},
        )
        self.recipe = recipe
        self._tuned: tuple[tuple, Recipe] | None = None

    def tuned_recipe(self) -> Recipe:
        """The recipe with the post-processing (mirroring, threshold, minimum lesion size) stored in the weights
        being served, re-read when training publishes new ones."""
        path = self.get_path()
        if not path or not os.path.exists(path):
            return self.recipe
        key = (str(path), os.path.getmtime(path))
        if self._tuned is None or self._tuned[0] != key:
            self._tuned = (key, from_checkpoint(self.recipe, weights.load_metadata(path)))
        return self._tuned[1]

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["inputs"] = list(self.recipe.inputs)
        return info

    def pre_transforms(self, data=None):
        device = (data or {}).get("device", "cpu")
        return preprocess(self.recipe, device=device)

    def inferer(self, data=None):
        """The sliding window for this study, with the test-time mirroring stored with the weights served: its ROI
        grown to cover it in one window when cheaper, its window batch sized from the free GPU memory on CUDA (see
        mslesion.unet.inference)."""
        data = data or {}
        image = data.get(IMAGE)
        shape = tuple(image.shape[1:]) if isinstance(image, torch.Tensor) else None
        return amp_sliding_window(self.tuned_recipe(), data.get("device"), shape, grow_window=True)

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None):
        tuned = self.tuned_recipe()
        return [
            LesionLabeld(keys="pred", value=self.recipe.output_value, min_voxels=tuned.min_lesion_voxels,
                         threshold=tuned.threshold),
            RestoreGeometryd(keys="pred"),
        ]

    def answered_label(self, data: dict) -> np.ndarray:
        """The label to answer, on the opened image's grid (a subclass may merge in more)."""
        return data["pred"][0].cpu().numpy().astype(np.uint8)

    def extra_results(self, data: dict) -> dict:
        """Task-specific entries of the response params."""
        return {}

    def writer(self, data: dict, extension=None, dtype=None):
        label = self.answered_label(data)
        affine = np.asarray(data[IMAGE].meta["original_affine"], dtype=np.float64)
        path = write_label(label, affine, data)
        min_voxels = int(requested(data, "min_lesion_voxels") or self.tuned_recipe().min_lesion_voxels)
        weights_path = self.get_path()
        result = {
            "task": self.recipe.task,
            "lesions": lesion_report(label, affine, min_voxels=min_voxels),
            "weights": os.path.basename(str(weights_path)) if weights_path else None,
            "weights_modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(weights_path)))
            if weights_path
            else None,
            "device": str(data.get("device")),
            **self.extra_results(data),
        }
        return path, result


FOLLOW_UP_NOTE = "of follow-up visits (with an earlier visit of the same subject in the datastore) "


class LesionSegmentationTrain(StatsFileTrainTask):
    """Fine-tunes a task's U-Net from the labels radiologists saved (or trains it de novo), then publishes it."""

    def __init__(self, recipe: Recipe, model_dir: str, default_weights: Path, description: str):
        super().__init__(description, model_dir, recipe.task)
        self.recipe = recipe
        self.model_dir = model_dir
        self.default_weights = default_weights

    def config(self) -> dict:
        # Numbers, never None: Slicer's options table sends a None default back as "" and OHIF's skips it. 0 means
        # the schedule's own value (mslesion.server.options drops it before the request reaches the recipe).
        return {
            "pretrained": True,
            "schedule": ["auto", "paper", "cpu"],  # a choice: "paper" published schedule, "cpu" short one, auto picks
            "max_epochs": 0,
            "lr": self.recipe.lr,
            "patches_per_study": 0,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            # MONAI Label's multi-GPU params: one DDP process per visible GPU ("gpus": "0,1" narrows them);
            # world_size 0 means one per GPU; a positive one on a CPU server runs that many gloo processes.
            "multi_gpu": True,
            "gpus": "all",
            "world_size": 0,
        }

    def labelled_studies(self, datastore: Datastore) -> list[dict]:
        """Training items (input channel paths and label path) of every image of this task with a final label."""
        items = []
        for entry in datastore.datalist():
            ref = parse_image_id(entry["image"])
            if ref is None or ref.suffix != self.recipe.inputs[0]:
                continue
            item = {IMAGE: entry["image"], "label": entry["label"], "id": ref.image_id}
            for companion in self.recipe.inputs[1:]:
                path = datastore.get_image_uri(ref.companion(companion).image_id)
                if not path:
                    break
                item[companion] = path
            else:
                if self.recipe.longitudinal:
                    previous = earlier_session(datastore, ref)
                    if previous is None:  # a first visit has no new lesions to learn from
                        continue
                    item[BASELINE] = datastore.get_image_uri(previous.image_id)
                items.append(item)
        return sorted(items, key=lambda i: i["id"])

    def check_ready(self, datastore: Datastore) -> list[dict]:
        items = self.labelled_studies(datastore)
        needed = self.recipe.min_labelled_studies
        if len(items) < needed:
            raise StudyError(
                422,
                f"{self.recipe.task} training needs at least {needed} labelled {self.recipe.inputs[0]} images "
                f"{FOLLOW_UP_NOTE if self.recipe.longitudinal else ''}"
                f"(one to train on, one to validate with); the datastore has {len(items)}. "
                "Save corrected labels with PUT /datastore/label (Slicer: Submit Label) and try again.",
            )
        return items

    def check_request(self, request: dict) -> int:
        """How many training processes the request asks for, or a 422 saying why this server cannot run them."""
        device = torch.device(name_to_device(request.get("device", "cuda")))
        try:
            return distributed.requested_world_size(request, device)
        except ValueError as e:
            raise StudyError(
                422, f"Cannot train with {e}. Ask for fewer processes (world_size), or leave world_size at 0 to use "
                "every visible GPU."
            ) from e

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        items = self.check_ready(datastore)
        size = self.check_request(request)
        if size > 1:
            device = torch.device(name_to_device(request.get("device", "cuda")))
            logger.info("%s: data-parallel training in %d processes", self.recipe.task, size)
            return distributed.spawn(self.train_rank, size, request, items, use_cuda=device.type == "cuda")
        return self.train_rank(request, items)

    def train_rank(self, request: dict, items: list[dict]) -> dict | None:
        """Training in this process: the only one, or one rank of several (then rank 0 writes stats and publishes)."""
        world = distributed.current()
        device = world.device if world.distributed else torch.device(name_to_device(request.get("device", "cuda")))
        recipe = for_request(self.recipe, request, device.type)
        n_val = max(1, round(len(items) * recipe.val_fraction))
        val_items, train_items = items[-n_val:], items[:-n_val]

        network = lesion_unet(recipe)
        pretrained = str(request.get("pretrained", True)).lower() not in ("false", "0", "no")
        current = weights.published_weights(self.model_dir, recipe.task)
        start_from = current if current.exists() else self.default_weights
        if pretrained:
            network.load_state_dict(weights.load_state(start_from))
            # validate with, and publish, the threshold and minimum size tuned for the weights being fine-tuned
            recipe = from_checkpoint(recipe, weights.load_metadata(start_from))
        lr = recipe.lr if pretrained else recipe.pretrain_lr
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        base = {
            "task": recipe.task,
            "status": "RUNNING",
            "start_ts": started,
            "device": str(device),
            "world_size": world.world_size,
            "pretrained_from": start_from.name if pretrained else None,
            "train_studies": [i["id"] for i in train_items],
            "val_studies": [i["id"] for i in val_items],
            "recipe": {k: v for k, v in recipe.as_dict().items() if k != "extra"},
        }
        if world.is_main:
            self._write_stats(base)

        def progress(update: dict) -> None:
            self._write_stats({**base, **update})

        result = fit(recipe, network, train_items, val_items, device, lr=lr, progress=progress)
        if not world.is_main:
            return None
        network.load_state_dict(result.state)
        recipe, site_scores = retuned_for_site(network, val_items, recipe, device)
        progress({"postprocessing": postprocessing(recipe), "postprocessing_scores": site_scores})
        published = weights.publish(
            result.state,
            self.model_dir,
            recipe.task,
            metadata={"best_epoch": result.best_epoch, "validation": result.validation, "pretrained": pretrained,
                      "recipe": recipe.as_dict(), "postprocessing": postprocessing(recipe)},
        )
        stats = {
            **base,
            "status": "PUBLISHED",
            "end_ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_validation": result.validation,
            "postprocessing": postprocessing(recipe),
            "postprocessing_scores": site_scores,
            "patches_per_second": round(result.patches_per_second, 3),
            "rank_steps": result.rank_steps,
            "rank_weights_sha256": result.rank_digests,
            "seconds": round(result.seconds, 1),
            "published": str(published),
        }
        self._write_stats(stats)
        return stats


class LesionSegmentationConfig(TaskConfig):
    """TaskConfig of a lesion U-Net task; a subclass names its recipe and describes itself."""

    recipe: Recipe
    description: str = ""

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        user_weights = conf.get(f"{name}_weights")
        self.default_weights = Path(user_weights) if user_weights else weights.default_weights(name)
        # the network the starting weights were trained as (their stored recipe), e.g. the instance-norm base weights
        meta = weights.load_metadata(self.default_weights) if self.default_weights.exists() else {}
        self.recipe = from_checkpoint(type(self).recipe, meta)
        self.network = lesion_unet(self.recipe)
        self.published = weights.published_weights(model_dir, name)
        # MONAI Label uses the last path that exists: published fine-tuned weights win over the defaults.
        self.path = [str(self.default_weights), str(self.published)]

    def infer(self):
        return LesionSegmentationInfer(self.recipe, self.path, self.network, self.description)

    def trainer(self):
        return LesionSegmentationTrain(self.recipe, self.model_dir, self.default_weights, self.description)
