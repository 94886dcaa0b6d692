"""The lesion U-Net pipeline that flair_lesion (and later new_lesion, enhancement) share.

A task module says only what is its own (its recipe, its inputs); this module holds the TaskConfig,
InferTask and TrainTask they all use.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialResample
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device, strtobool

from .. import distributed, weights
from ..answers import write_answer
from ..metrics import without_small_lesions
from ..report import lesion_report
from ..server.datastore import atomic_write_text
from ..studies import BASELINE, StudyError, earlier_session, parse_image_id
from ..threads import apply_cpu_thread_policy
from ..unet.inference import amp_sliding_window, gpu_peak_mb, reset_gpu_peak, threshold_label
from ..unet.networks import lesion_unet
from ..unet.recipes import Recipe, for_cpu, from_checkpoint, postprocessing
from ..unet.training import fit
from ..unet.transforms import IMAGE, preprocess
from ..vocabulary import model_labels

logger = logging.getLogger(__name__)


def requested(data: Mapping, key: str) -> float:
    """A numeric request option; 0, "" (a GUI's empty field) or absent mean "the tuned value" (returns 0)."""
    value = data.get(key)
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        raise StudyError(422, f"'{key}' must be a number, got {value!r}; leave it at 0 for the tuned value") from None


class LesionLabeld(MapTransform):
    """Logits to a label holding ``value`` on predicted lesion voxels (0 elsewhere), keeping the geometry.

    A voxel is lesion where its lesion probability is above ``threshold`` (or the request's ``threshold``);
    predicted lesions smaller than ``min_voxels`` (or the request's ``min_lesion_voxels``) are dropped. Both are
    tuned on validation studies and travel with the weights: the label answered is the one the report counts and
    the one lesion-wise metrics score."""

    def __init__(self, keys, value: int, min_voxels: int = 1, threshold: float = 0.5):
        super().__init__(keys)
        self.value = value
        self.min_voxels = min_voxels
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        min_voxels = int(requested(d, "min_lesion_voxels") or self.min_voxels)
        threshold = float(requested(d, "threshold") or self.threshold)
        for key in self.key_iterator(d):
            logits = d[key]
            label = threshold_label(logits, threshold)
            if min_voxels > 1:
                kept = without_small_lesions(label[0].cpu().numpy(), min_voxels)
                label = torch.as_tensor(kept, device=label.device)[None]
            label = label * self.value
            d[key] = MetaTensor(label, affine=logits.affine) if isinstance(logits, MetaTensor) else label
        return d


def integer_offset(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray | None:
    """Voxel offset from one grid to another when they differ only by a whole-voxel shift (a crop), else None."""
    voxel_to_voxel = np.linalg.inv(dst_affine) @ src_affine
    shift = voxel_to_voxel[:3, 3]
    if np.allclose(voxel_to_voxel[:3, :3], np.eye(3), atol=1e-4) and np.allclose(shift, np.round(shift), atol=1e-3):
        return np.round(shift).astype(int)
    return None


def paste(label: torch.Tensor, offset: np.ndarray, shape: list[int]) -> torch.Tensor:
    """A (1, ...) label placed at ``offset`` inside an empty volume of ``shape`` (parts outside are dropped)."""
    out = torch.zeros((1, *shape), dtype=label.dtype, device=label.device)
    src, dst = [slice(None)], [slice(None)]
    for start, size, full in zip(offset.tolist(), label.shape[1:], shape, strict=True):
        lo, hi = max(start, 0), min(start + size, full)
        if hi <= lo:
            return out
        src.append(slice(lo - start, hi - start))
        dst.append(slice(lo, hi))
    out[tuple(dst)] = label[tuple(src)]
    return out


class RestoreGeometryd(MapTransform):
    """Resamples a label back onto the grid of the image as it was loaded (orientation, spacing, crop undone)."""

    def __init__(self, keys, ref_key: str = IMAGE):
        super().__init__(keys)
        self.ref_key = ref_key
        self.resample = SpatialResample(mode="nearest", padding_mode="zeros", dtype=torch.float32)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        meta = d[self.ref_key].meta
        affine = torch.as_tensor(np.asarray(meta["original_affine"]), dtype=torch.float64)
        shape = [int(s) for s in np.asarray(meta["spatial_shape"]).tolist()]
        for key in self.key_iterator(d):
            label = d[key]
            offset = integer_offset(np.asarray(label.affine, dtype=np.float64), affine.numpy())
            if offset is not None:  # same grid up to the head crop: paste, no interpolation
                d[key] = paste(label.as_tensor() if isinstance(label, MetaTensor) else label, offset, shape)
                continue
            restored = self.resample(label.to(torch.float32), dst_affine=affine, spatial_size=shape)
            d[key] = restored.round().to(torch.uint8)
        return d


_RESULTS_DIR: str | None = None


def results_dir() -> str:
    """A directory private to this server process for answered labels.

    The REST layer deletes the answered file after sending it, and MONAILabelClient saves the answer under the
    file's *base name* in its own temp dir (/tmp by default): with the server's file directly in /tmp, a client
    on the same machine could write its copy to the very path the server was about to delete.
    """
    global _RESULTS_DIR
    if _RESULTS_DIR is None or not os.path.isdir(_RESULTS_DIR):
        _RESULTS_DIR = tempfile.mkdtemp(prefix="msapp-results-")
    return _RESULTS_DIR


def write_label(label: np.ndarray, affine: np.ndarray, request: dict | None = None) -> str:
    """The answered uint8 label in a temp file of results_dir(), in the format the request asks for
    (``result_extension``: .nii.gz by default, .nii, or .nrrd for OHIF; see mslesion.answers)."""
    return write_answer(label, affine, results_dir(), request)


class ReportsGpuPeak:
    """Infer task mixin: the server's CPU thread policy (set once, see mslesion.threads), and on CUDA the answer
    carries the peak GPU memory the request took (``gpu_peak_mb``).

    The peak is the process's, reset when the request starts: nested calls (``skip_writer``, e.g. new_lesion's
    include_all_lesions) leave it alone, and concurrent requests on one GPU share it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        apply_cpu_thread_policy()

    def __call__(self, request, callbacks=None):
        device = torch.device(name_to_device(request.get("device", "cuda")))
        tracked = device.type == "cuda" and not strtobool(str(request.get("skip_writer", False)))
        if tracked:
            reset_gpu_peak(device)
        label, result = super().__call__(request, callbacks)
        if tracked and isinstance(result, dict):
            result["gpu_peak_mb"] = gpu_peak_mb(device)
        return label, result


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
        """The recipe with the post-processing (threshold, minimum lesion size) stored in the weights being served,
        re-read when training publishes new ones."""
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
        """The sliding window for this study: its ROI grown to cover it in one window when cheaper, its window batch
        sized from the free GPU memory on CUDA (see mslesion.unet.inference)."""
        data = data or {}
        image = data.get(IMAGE)
        shape = tuple(image.shape[1:]) if isinstance(image, torch.Tensor) else None
        return amp_sliding_window(self.recipe, data.get("device"), shape, grow_window=True)

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None):
        return [
            LesionLabeld(keys="pred", value=self.recipe.output_value, min_voxels=self.tuned_recipe().min_lesion_voxels,
                         threshold=self.tuned_recipe().threshold),
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


class StatsFileTrainTask(TrainTask):
    """A TrainTask whose progress and result live in ``<model_dir>/<task>/train_stats.json`` (shown by /info/),
    written atomically so a reader never sees half a file."""

    def __init__(self, description: str, model_dir: str, task: str):
        super().__init__(description)
        self.stats_path = Path(model_dir) / task / "train_stats.json"

    def stats(self) -> dict:
        try:
            return json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return {}

    def _write_stats(self, stats: dict) -> None:
        self.stats_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(str(self.stats_path), json.dumps(stats, indent=1))


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
        schedule = request.get("schedule", "auto")
        recipe = self.recipe if schedule == "paper" or (schedule == "auto" and device.type == "cuda") else for_cpu(
            self.recipe
        )
        recipe = recipe.with_overrides(request)
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
        self.network = lesion_unet(self.recipe)
        user_weights = conf.get(f"{name}_weights")
        self.default_weights = Path(user_weights) if user_weights else weights.default_weights(name)
        self.published = weights.published_weights(model_dir, name)
        # MONAI Label uses the last path that exists: published fine-tuned weights win over the defaults.
        self.path = [str(self.default_weights), str(self.published)]

    def infer(self):
        return LesionSegmentationInfer(self.recipe, self.path, self.network, self.description)

    def trainer(self):
        return LesionSegmentationTrain(self.recipe, self.model_dir, self.default_weights, self.description)
