"""enhancement_prediction: does a study without contrast likely have enhancing lesions? (Narayana et al. 2020)

Opened on a FLAIR, with the T1w and T2w of the same session. Answers the participant-wise probability and decision,
slice-wise scores, and a label (1) on the lesion voxels of the slices predicted to enhance. The lesion mask is the
study's saved FLAIR label when it has one, else flair_lesion's prediction. The model and its training live in
``mslesion.enhancement_prediction``; this module wires them into MONAI Label.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer
from monai.transforms import Compose, MapTransform, SpatialResample
from monailabel.interfaces.config import TaskConfig
from monailabel.interfaces.datastore import Datastore, DefaultLabelTag
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from .. import weights
from ..answers import write_label
from ..enhancement_prediction.data import LabelledStudy, previous_session_path
from ..enhancement_prediction.data import stacks as study_stacks
from ..enhancement_prediction.explain import driving_lesions, top_slices
from ..enhancement_prediction.lesion_reader import READER_KEYS, LesionReader, lesion_table, reader_in
from ..enhancement_prediction.lesion_reader import answer as reader_answer
from ..enhancement_prediction.networks import EnhancementPredictor
from ..enhancement_prediction.pretrain import weights_metadata
from ..enhancement_prediction.recipe import ENHANCEMENT_PREDICTION, PredictionRecipe
from ..enhancement_prediction.slices import ENHANCING, LESION, PREVIOUS, enhancing_slices, load_study, to_slices
from ..enhancement_prediction.training import train
from ..metrics import without_small_lesions
from ..studies import FLAIR, T1, T1_POST, T2, StudyError, parse_image_id
from ..unet.inference import predict_logits, threshold_label
from ..unet.networks import lesion_unet
from ..unet.postprocess import RestoreGeometryd, integer_offset, paste
from ..unet.recipes import FLAIR_LESION, Recipe, from_checkpoint
from ..unet.transforms import IMAGE, preprocess
from ..vocabulary import answer_segment_name, model_labels
from .base import ReportsGpuPeak, StatsFileTrainTask

logger = logging.getLogger(__name__)

SAVED_LABEL, PREDICTED = "saved label", "flair_lesion prediction"


def recipe_of(path: str | Path | None) -> PredictionRecipe:
    """The recipe a checkpoint was trained with (its network shape), the default one without a readable file."""
    if path and Path(path).exists():
        try:
            stored = weights.load_metadata(path).get("recipe")
            if stored:
                return PredictionRecipe.from_dict(stored)
        except Exception as error:  # a broken file is reported when inference loads it
            logger.warning("cannot read the recipe of %s: %s", path, error)
    return ENHANCEMENT_PREDICTION


def saved_lesion_label(data: Mapping[Hashable, Any]) -> str | None:
    """The saved (final) FLAIR label of the study: ``lesion_label`` in the request, else where a local datastore keeps
    it (``labels/final/<FLAIR file name>`` beside the FLAIR)."""
    given = data.get("lesion_label")
    if isinstance(given, str) and given:
        return given if os.path.exists(given) else None
    flair = data.get("image_path") or data.get(IMAGE)
    if not isinstance(flair, str) or not flair:
        return None
    candidate = os.path.join(os.path.dirname(flair), "labels", DefaultLabelTag.FINAL.value, os.path.basename(flair))
    return candidate if os.path.exists(candidate) else None


class FlairLesionSegmenter:
    """flair_lesion's U-Net, run to get a lesion mask when the study has no saved FLAIR label. Loads the published
    flair_lesion weights if training produced some, else the user's or the shipped defaults; reloads on change."""

    def __init__(self, model_dir: str, default_weights: Path):
        self.model_dir, self.default_weights = model_dir, default_weights
        self._cached: tuple[str, float, str, torch.nn.Module, Recipe] | None = None

    def weights_path(self) -> Path:
        published = weights.published_weights(self.model_dir, FLAIR_LESION.task)
        return published if published.exists() else self.default_weights

    def network(self, device: torch.device) -> torch.nn.Module:
        path = self.weights_path()
        if not path.exists():
            raise StudyError(
                422,
                "This study has no saved FLAIR lesion label and there are no flair_lesion weights to predict one: "
                "save a FLAIR label (PUT /datastore/label) or train flair_lesion first.",
            )
        stamp = path.stat().st_mtime
        if self._cached is None or self._cached[:3] != (str(path), stamp, str(device)):
            recipe = from_checkpoint(FLAIR_LESION, weights.load_metadata(path))  # its network and post-processing
            network = lesion_unet(recipe)
            network.load_state_dict(weights.load_state(path))
            self._cached = (str(path), stamp, str(device), network.to(device).eval(), recipe)
        return self._cached[3]

    @property
    def cache_tag(self) -> str:
        """Short digest of the flair_lesion weights in use: keys caches of masks they predicted."""
        return hashlib.sha1(self.weights_path().read_bytes()).hexdigest()[:10]

    def recipe(self) -> Recipe:
        """flair_lesion's recipe with the post-processing (mirroring, threshold, minimum size) stored in its weights."""
        return self._cached[4] if self._cached else FLAIR_LESION

    def __call__(self, flair_path: str, reference: MetaTensor, device: torch.device) -> torch.Tensor:
        """Binary lesion mask (1, X, Y, Z) on ``reference``'s grid."""
        image = Compose(preprocess(FLAIR_LESION, device=device))({IMAGE: flair_path})[IMAGE]
        network = self.network(device)
        recipe = self.recipe()
        logits = predict_logits(network, image, recipe, grow_window=True)
        label = torch.as_tensor(without_small_lesions(threshold_label(logits, recipe.threshold).cpu().numpy()[0],
                                                      recipe.min_lesion_voxels))[None]
        affine = np.asarray(reference.affine, dtype=np.float64)
        shape = [int(s) for s in reference.shape[1:]]
        offset = integer_offset(np.asarray(image.affine, dtype=np.float64), affine)
        if offset is not None:  # same grid up to flair_lesion's head crop
            return paste(label, offset, shape).to(torch.float32)
        moved = SpatialResample(mode="nearest", padding_mode="zeros")(
            MetaTensor(label.to(torch.float32), affine=image.affine.cpu()), dst_affine=torch.as_tensor(affine),
            spatial_size=shape,
        )
        return moved.as_tensor().round()


class PredictedLesionMaskd(MapTransform):
    """Puts flair_lesion's lesion mask under ``lesion`` on the loaded FLAIR's grid."""

    def __init__(self, segmenter: FlairLesionSegmenter):
        super().__init__(keys=[IMAGE])
        self.segmenter = segmenter

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        device = torch.device(name_to_device(str(d.get("device", "cpu"))))
        flair = d.get("image_path") or d[IMAGE].meta.get("filename_or_obj")
        mask = self.segmenter(str(flair), d[IMAGE], device)
        d[LESION] = MetaTensor(mask, affine=d[IMAGE].affine)
        return d


def native_axial_index(slice_ras: int, centre: tuple[float, float], ras_affine: np.ndarray,
                       original_affine: np.ndarray) -> tuple[int, int]:
    """(axis, index): the voxel index, along the FLAIR's own axis closest to superior-inferior, of a slice of the
    RAS 1 mm grid (taken at the head's in-plane centre)."""
    world = ras_affine @ np.array([centre[0], centre[1], slice_ras, 1.0])
    voxel = np.linalg.inv(original_affine) @ world
    directions = original_affine[:3, :3] / np.linalg.norm(original_affine[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(directions[2])))
    return axis, int(round(float(voxel[axis])))


class EnhancingSlicesLabeld(MapTransform):
    """Network outputs -> ``pred``: 1 on the lesion voxels (undilated mask) of the slices predicted to enhance, on the
    RAS 1 mm grid (RestoreGeometryd then takes it to the FLAIR's own grid); the figures go under ``enhancement``."""

    def __init__(self, recipe: PredictionRecipe, readers: dict[str, LesionReader | None] | None = None):
        super().__init__(keys=["pred"])
        self.recipe, self.readers = recipe, readers or {}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        out = d["pred"]
        scores = out["slice_scores"].detach().cpu().numpy().astype(np.float64)
        slice_cut, participant_cut = float(out["slice_threshold"]), float(out["participant_threshold"])
        probability = float(out["probability"])
        lesion = np.asarray(d[LESION].detach().cpu() if isinstance(d[LESION], torch.Tensor) else d[LESION])[0] > 0
        label = np.zeros(lesion.shape, dtype=np.uint8)
        ras_affine = np.asarray(d[IMAGE].affine, dtype=np.float64)
        original = np.asarray(d[IMAGE].meta["original_affine"], dtype=np.float64)
        thickness = self.recipe.slab_slices
        rows = []
        for slab, centre, score in zip(d["slab_index"], d["slice_index"], scores, strict=True):
            if slab < 0:
                continue
            predicted = score >= slice_cut
            if predicted:
                z = slice(int(slab) * thickness, int(slab) * thickness + thickness)
                label[..., z] = lesion[..., z]
            axis, index = native_axial_index(int(centre), d["head_centre"], ras_affine, original)
            rows.append({"index": index, "axis": axis, "index_ras_1mm": int(centre), "score": round(float(score), 4),
                         "predicted": bool(predicted)})
        d["pred"] = MetaTensor(torch.from_numpy(label)[None], affine=d[IMAGE].affine)
        d["enhancement"] = {
            "probability": round(probability, 4),
            "decision": "enhancing" if probability >= participant_cut else "not enhancing",
            "threshold": round(participant_cut, 4),
            "slice_threshold": round(slice_cut, 4),
            "slices": sorted(rows, key=lambda r: r["index_ras_1mm"]),
            "lesion_voxels": int(lesion.sum()),
            "temperature": round(float(out["temperature"]), 4) if "temperature" in out else 1.0,
        }
        top = top_slices(rows)  # what drove the answer (enhancement_prediction/explain.py)
        kept = [(int(slab), float(score)) for slab, score in zip(d["slab_index"], scores, strict=True) if slab >= 0]
        d["enhancement"]["top_slices"] = top
        d["enhancement"]["lesions"] = driving_lesions(lesion, ras_affine, [k[0] for k in kept], [k[1] for k in kept],
                                                      thickness, [r["index_ras_1mm"] // thickness for r in top])
        d["enhancement"]["answered_by"] = "participant_net"
        reader = self.readers.get(d.get("lesion_mask_source"))
        if reader is not None:
            self._read_lesions(d, reader, lesion, ras_affine)
        return d

    @staticmethod
    def _read_lesions(d: dict, reader: LesionReader, lesion: np.ndarray, ras_affine: np.ndarray) -> None:
        """With weights that carry a lesion reader, it gives the headline probability and decision (it scored the
        shifted test cohort better than the participant net: docs/enhancement_prediction.md); the participant net's
        stay in the answer under ``participant_net``, the reader's lesions under ``lesion_reader``."""
        images = [np.asarray(d[key].detach().cpu() if isinstance(d[key], torch.Tensor) else d[key])[0]
                  for key in (IMAGE, T1, T2)]
        read = reader_answer(reader, lesion_table(*images, lesion), ras_affine)
        headline = ("probability", "decision", "threshold", "temperature")
        d["enhancement"]["participant_net"] = {key: d["enhancement"][key] for key in headline}
        d["enhancement"].update({key: read[key] for key in headline}, answered_by="lesion_reader")
        d["enhancement"]["lesion_reader"] = {"lesions_read": read["lesions_read"], "lesions": read["lesions"]}


class EnhancementPredictionInfer(ReportsGpuPeak, BasicInferTask):
    """Slice stack -> VGG16 slice scores -> participant net; answered as figures and a label on the FLAIR's grid."""

    def __init__(self, recipe: PredictionRecipe, paths: list[str], network: EnhancementPredictor,
                 segmenter: FlairLesionSegmenter, description: str):
        super().__init__(
            path=paths,
            network=network,
            type=InferType.SEGMENTATION,
            labels=model_labels(recipe.task),
            dimension=3,
            description=description,
            input_key="slices",
            output_label_key="pred",
            load_strict=True,
            config={"lesion_mask": "auto"},  # "saved": require a saved FLAIR label; "predict": always run flair_lesion
        )
        self.recipe = recipe
        self.segmenter = segmenter

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["inputs"] = list(self.recipe.inputs)
        return info

    def __call__(self, request, callbacks=None):
        """The answer's segment is named with the decision and probability (``label_names``): the one place both
        Slicer's segment list and a saved scene show it. BasicInferTask sets label_names last, hence here."""
        label, result = super().__call__(request, callbacks)
        if isinstance(result, dict) and "probability" in result:
            name = answer_segment_name(float(result["probability"]), result.get("decision") == "enhancing")
            result["label_names"] = {name: 1}
        return label, result

    def pre_transforms(self, data=None):
        data = data or {}
        check_companions(data)
        mode = str(data.get("lesion_mask", "auto"))
        if mode not in ("auto", "saved", "predict"):
            raise StudyError(422, f"lesion_mask must be 'auto', 'saved' or 'predict', not '{mode}'.")
        saved = saved_lesion_label(data) if mode != "predict" else None
        if mode == "saved" and not saved:
            raise StudyError(
                422,
                "lesion_mask='saved' but this FLAIR has no saved label; save one with PUT /datastore/label "
                "(Slicer: Submit Label) or use lesion_mask='auto'.",
            )
        chain: list = [_SetItemd(LESION, saved)] if saved else []
        if self.recipe.previous_session:  # weights trained with the FLAIR-change channel
            chain.append(_SetItemd(PREVIOUS, previous_session_path(str(data.get("image_path") or data.get(IMAGE)))))
        chain += load_study(self.recipe, with_lesion=bool(saved), cached=True)
        if not saved:
            chain.append(PredictedLesionMaskd(self.segmenter))
        chain += [_SetItemd("lesion_mask_source", SAVED_LABEL if saved else PREDICTED)]
        return chain + to_slices(self.recipe)

    def inferer(self, data=None):
        return SimpleInferer()

    def inverse_transforms(self, data=None):
        return None

    def post_transforms(self, data=None):
        return [EnhancingSlicesLabeld(self.recipe, self.lesion_readers()), RestoreGeometryd(keys="pred")]

    def lesion_readers(self) -> dict[str, LesionReader | None]:
        """The lesion readers stored with the weights served, by lesion mask source (re-read when the weights file
        changes): one fitted on drawn labels for a saved label, one fitted on flair_lesion's masks for a prediction."""
        path = self.get_path()
        if not path or not os.path.exists(path):
            return {}
        key = (str(path), os.path.getmtime(path))
        if getattr(self, "_readers", (None, None))[0] != key:
            meta = weights.load_metadata(path)
            self._readers = (key, {SAVED_LABEL: reader_in(meta), PREDICTED: reader_in(meta, predicted_mask=True)})
        return self._readers[1]

    def writer(self, data: dict, extension=None, dtype=None):
        label = np.asarray(data["pred"][0].cpu()).astype(np.uint8)
        affine = np.asarray(data[IMAGE].meta["original_affine"], dtype=np.float64)
        path = write_label(label, affine, data)
        weights_path = self.get_path()
        result = {
            "task": self.recipe.task,
            **data["enhancement"],
            "lesion_mask_source": data["lesion_mask_source"],
            "slice_index_axis": "index is along the FLAIR's own voxel axis 'axis' (the one closest to "
                                "superior-inferior); index_ras_1mm along the RAS 1 mm grid the model works on",
            "weights": os.path.basename(str(weights_path)) if weights_path else None,
            "weights_modified": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(weights_path)))
            if weights_path else None,
            "device": str(data.get("device")),
        }
        return path, result


SUMMARY_KEYS = ("probability", "decision", "threshold", "lesion_mask_source", "weights")


def remember_prediction(store, image_id: str, result: dict | None) -> None:
    """Keeps the answer's decision in the image's info, where a GUI user can read it (OHIF never sees the params)."""
    params = (result or {}).get("params") or {}
    if "probability" not in params:
        return
    summary = {key: params.get(key) for key in SUMMARY_KEYS}
    summary["slices_predicted"] = [row["index"] for row in params.get("slices", []) if row.get("predicted")]
    summary["ts"] = int(time.time())
    try:
        store.update_image_info(image_id, {"enhancement_prediction": summary})
    except Exception as error:  # the answer itself is what matters; its copy in the info is a convenience
        logger.warning("could not keep enhancement_prediction's answer in %s's info: %s", image_id, error)


def check_companions(data: dict) -> None:
    """Fills ``sequences`` from the FLAIR's BIDS name when a caller passed a file path (the app resolves ids itself),
    and answers 422 naming a missing T1w or T2w."""
    sequences = dict(data.get("sequences") or {})
    flair = data.get("image_path") or data.get(IMAGE)
    ref = parse_image_id(flair) if isinstance(flair, str) else None
    missing = []
    for suffix in (T1, T2):
        if suffix in data or suffix in sequences:
            continue
        candidate = os.path.join(os.path.dirname(flair), f"{ref.companion(suffix).image_id}.nii.gz") if ref else None
        if candidate and os.path.exists(candidate):
            sequences[suffix] = candidate
        else:
            missing.append(ref.companion(suffix).image_id if ref else f"the {suffix} of this session")
    if missing:
        raise StudyError(
            422,
            f"enhancement_prediction needs {', '.join(missing)} beside the FLAIR (same subject and session): copy "
            "the file(s) as <id>.nii.gz into the server's studies folder, or upload with "
            "PUT /datastore/image?image=<id>.",
        )
    data["sequences"] = sequences


class _SetItemd(MapTransform):
    """Puts a constant under a key (the lesion label path, where the mask came from)."""

    def __init__(self, key: str, value: Any):
        super().__init__(keys=[key], allow_missing_keys=True)
        self.key, self.value = key, value

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        d[self.key] = self.value
        return d


def study_has_enhancement(path: str, min_voxels: int) -> bool:
    """Whether a post-contrast label holds an enhancing region of ``min_voxels``+ in an axial slice (RAS-reoriented)."""
    image = nib.as_closest_canonical(nib.load(path))
    return bool(enhancing_slices(np.asarray(image.dataobj) > 0, min_voxels).any())


class EnhancementPredictionTrain(StatsFileTrainTask):
    """Fine-tunes the slice classifier's last block + head and retrains the participant net from saved labels:
    FLAIR labels (lesion masks) and post-contrast T1 labels (truth) of sessions with all four sequences."""

    def __init__(self, recipe: PredictionRecipe, model_dir: str, default_weights: Path, description: str):
        super().__init__(description, model_dir, recipe.task)
        self.recipe, self.model_dir, self.default_weights = recipe, model_dir, default_weights

    def config(self) -> dict:
        return {
            "from_scratch": False,   # True: the whole schedule (stage 0 included), not only the paper's stage 2
            "finetune_epochs": self.recipe.finetune_epochs,
            "finetune_lr": self.recipe.finetune_lr,
            "participant_epochs": self.recipe.participant_epochs,
            "val_fraction": self.recipe.val_fraction,
            "device": "cuda" if torch.cuda.is_available() else "cpu",
        }

    def labelled_studies(self, datastore: Datastore) -> list[dict]:
        """Sessions whose FLAIR and post-contrast T1 both have a saved label and whose T1w and T2w are present."""
        items = []
        for entry in datastore.datalist():
            ref = parse_image_id(entry["image"])
            if ref is None or ref.suffix != FLAIR:
                continue
            paths = {suffix: datastore.get_image_uri(ref.companion(suffix).image_id) for suffix in (T1, T2)}
            truth = datastore.get_label_uri(ref.companion(T1_POST).image_id, DefaultLabelTag.FINAL.value)
            if all(paths.values()) and truth and os.path.exists(truth):
                study = f"sub-{ref.subject}_ses-{ref.session}"
                items.append({IMAGE: entry["image"], **paths, LESION: entry["label"], ENHANCING: truth,
                              "subject": ref.subject, "study": study})
        return sorted(items, key=lambda i: i["study"])

    def check_ready(self, datastore: Datastore) -> list[dict]:
        items = self.labelled_studies(datastore)
        needed = self.recipe.min_labelled_studies
        how = (f"a study counts when its {FLAIR} has a saved lesion label, its {T1} and {T2} are in the datastore, and "
               f"its {T1_POST} has a saved label (1 = enhancing lesion, an empty label for none); save labels with "
               "PUT /datastore/label")
        if len(items) < needed:
            raise StudyError(422, f"{self.recipe.task} training needs at least {needed} labelled studies; the datastore"
                                  f" has {len(items)}: {how}.")
        classes = {study_has_enhancement(i[ENHANCING], self.recipe.min_enhancing_voxels) for i in items}
        if len(classes) < 2:
            which = "enhancing" if True in classes else "non-enhancing"
            raise StudyError(422, f"{self.recipe.task} training needs studies with and without enhancing lesions; "
                                  f"all {len(items)} labelled studies are {which}: label studies of the other kind "
                                  f"({how}).")
        return items

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        items = self.check_ready(datastore)
        device = torch.device(name_to_device(request.get("device", "cuda")))
        current = weights.published_weights(self.model_dir, self.recipe.task)
        start_from = current if current.exists() else self.default_weights
        recipe = recipe_of(start_from).with_overrides(request)
        from_scratch = str(request.get("from_scratch", False)).lower() in ("true", "1", "yes")
        model = EnhancementPredictor(recipe)
        if not from_scratch:
            model.load_state_dict(weights.load_state(start_from))
        subjects = sorted({i["subject"] for i in items})
        rng = np.random.default_rng(0)
        n_val = max(1, round(len(subjects) * recipe.val_fraction))
        val_subjects = set(rng.permutation(subjects)[:n_val].tolist()) if len(subjects) > 1 else set()
        base = {
            "task": recipe.task, "status": "RUNNING", "start_ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "device": str(device), "pretrained_from": None if from_scratch else start_from.name,
            "train_studies": [i["study"] for i in items if i["subject"] not in val_subjects],
            "val_studies": [i["study"] for i in items if i["subject"] in val_subjects],
        }
        self._write_stats(base)
        studies = [LabelledStudy(i["study"], i["subject"], {**{k: i[k] for k in (IMAGE, T1, T2, LESION, ENHANCING)},
                                                           PREVIOUS: previous_session_path(i[IMAGE])})
                   for i in items]
        stacks = study_stacks(studies, recipe, cache_dir=None)  # labels change with corrections: no cache
        train_stacks = [s for s in stacks if s["subject"] not in val_subjects]
        val_stacks = [s for s in stacks if s["subject"] in val_subjects]
        stages = ("scratch", "head", "finetune", "participant") if from_scratch else ("finetune", "participant")
        try:
            result = train(recipe, train_stacks, val_stacks, device, model=model, from_scratch=from_scratch,
                           stages=stages, progress=lambda u: self._write_stats({**base, **u}))
        except ValueError as error:
            raise StudyError(422, f"{recipe.task} training cannot run on these labels: {error}.") from error
        carried = {} if from_scratch else {k: v for k, v in weights.load_metadata(start_from).items()
                                           if k in READER_KEYS}  # the readers do not depend on the CNN
        meta = weights_metadata(recipe, result.model, {"source": "training from saved labels",
                                                       "validation": result.validation,
                                                       "pretrained_from": base["pretrained_from"], **carried})
        published = weights.publish(result.model.state_dict(), self.model_dir, recipe.task, metadata=meta)
        stats = {**base, "status": "PUBLISHED", "end_ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "history": result.history, "best_validation": result.validation,
                 "thresholds": meta["thresholds"], "seconds": round(result.seconds, 1), "published": str(published)}
        self._write_stats(stats)
        return stats


class EnhancementPrediction(TaskConfig):
    """TaskConfig of enhancement_prediction: weights (published > user's > shipped), the lesion segmenter, tasks."""

    recipe: PredictionRecipe = ENHANCEMENT_PREDICTION
    description = ("Gadolinium-free prediction of enhancing lesions from T1w, T2w and FLAIR (Narayana 2020), opened "
                   "on the FLAIR. Slicer names the answered segment with the decision and probability, e.g. 'MS "
                   "lesion (predicted enhancing, p = 0.83)'; it holds the lesions of the slices predicted to enhance. "
                   "The full answer (probability, decision, threshold, slice scores) is in the response params "
                   "(Slicer's Python console) and is kept in the image's info: GET /datastore/image/info?image=<FLAIR "
                   "id>, key enhancement_prediction")

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        user_weights = conf.get(f"{name}_weights")
        self.default_weights = Path(user_weights) if user_weights else weights.default_weights(name)
        self.published = weights.published_weights(model_dir, name)
        # MONAI Label uses the last path that exists: published fine-tuned weights win over the defaults.
        self.path = [str(self.default_weights), str(self.published)]
        current = self.published if self.published.exists() else self.default_weights
        self.recipe = recipe_of(current)
        self.network = EnhancementPredictor(self.recipe)
        lesion_weights = conf.get(f"{FLAIR_LESION.task}_weights")
        self.segmenter = FlairLesionSegmenter(
            model_dir, Path(lesion_weights) if lesion_weights else weights.default_weights(FLAIR_LESION.task)
        )

    def infer(self):
        return EnhancementPredictionInfer(self.recipe, self.path, self.network, self.segmenter, self.description)

    def trainer(self):
        return EnhancementPredictionTrain(self.recipe, self.model_dir, self.default_weights, self.description)
