"""What 3D Slicer's MONAI Label module and OHIF's MONAI Label panel (MONAI Label 0.8.5) do with a server's answers.

Written from reading tag 0.8.5 of Project-MONAI/MONAILabel (plugins/slicer/MONAILabel/MONAILabel.py and its
MONAILabelLib/client.py; plugins/ohifv3/extensions/monai-label/src: MonaiLabelPanel.tsx, OptionsForm.tsx,
OptionTable.tsx, ActiveLearning.tsx, AutoSegmentation.tsx, services/MonaiLabelClient.js). Only the rules that change
what a radiologist sees or saves are replayed; the HTTP is MONAILabelClient's (the Slicer module's client.py is the
same code) or plain requests where the panel's differ.

Slicer rules replayed
- /info's app-level ``labels`` become empty segments, in list order, when a sample is opened.
- Run: labels are the answer's ``label_names`` if any, else the model's ``labels``; a dict is sorted by value into a
  list, "background" dropped; answered value v goes to the segment named labels[v - 1] (created when missing).
- Submit Label: every segment but background/scribbles is exported, segment i of that list as value i + 1, and sent
  with ``{"label_info": [{"name", "idx"}]}``; a local (session) volume is first uploaded under its node name.
- Options table: a value is shown as ``str(v) if v else ""``; what is sent is coerced by the type of the default
  (bool, int: ``int(text) if text else 0``, float likewise, list: the chosen item first); a ``None`` default sends the
  text as a string.
- Progress: the first ``train_stats`` entry; epoch ``0 if total_time else epoch (1)`` of ``total_epochs (1)``;
  accuracy bar ``best_metric``.

OHIF rules replayed
- Segments: app-level labels plus every model's labels, de-duplicated and sorted (JavaScript string order), segment
  index = position + 1; an answer's value is moved to the segment of the model label with that value, by name.
- Run asks ``output=image`` (the NRRD alone: params never reach the panel); a non-200 shows "Failed to Run
  Segmentation" whatever the server said.
- Options: only edited values are sent; a number default is parsed with parseInt/parseFloat (NaN -> null in JSON).
- Update Model: ``POST /train/`` with ``{model: {edited options}}``; 200 shows "Model update task STARTED".
- Progress: the first ``train_stats`` entry, as Slicer.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import requests
import SimpleITK as sitk
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

IGNORED = ("background", "foreground_scribbles", "background_scribbles")
SECTIONS = {"infer": "models", "train": "trainers", "activelearning": "strategies", "scoring": "scoring"}


def read_answer(path: str) -> np.ndarray:
    """An answered label file (NRRD or NIfTI) as an array in NIfTI (x, y, z) voxel order."""
    if path.endswith((".nii", ".nii.gz")):
        return np.asarray(nib.load(path).dataobj).astype(np.uint8)
    return sitk.GetArrayFromImage(sitk.ReadImage(path)).transpose(2, 1, 0).astype(np.uint8)


def as_label_list(labels) -> list[str]:
    if isinstance(labels, dict):
        return [k for k, _ in sorted(labels.items(), key=lambda item: item[1])]
    return list(labels or [])


@dataclass
class Segment:
    name: str
    mask: np.ndarray | None = None  # None: empty


@dataclass
class SlicerModule:
    """The MONAI Label module of one 3D Slicer, with one volume and its segmentation node."""

    url: str
    tmpdir: str
    client_id: str = "user-xyz"
    info: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)
    volume: nib.Nifti1Image | None = None
    segments: list[Segment] = field(default_factory=list)
    table_edits: dict = field(default_factory=dict)
    last_error: str | None = None

    def client(self) -> MONAILabelClient:
        return MONAILabelClient(self.url, self.tmpdir, self.client_id)

    def fetch_info(self) -> dict:
        self.info = self.client().info()
        return self.info

    # -- opening a volume -------------------------------------------------------------------------------------------

    def next_sample(self, strategy: str = "first") -> dict:
        self.fetch_info()
        sample = self.client().next_sample(strategy, self.params_from_config("activelearning", strategy))
        answer = requests.get(f"{self.url}/datastore/image", params={"image": sample["id"]}, timeout=60)
        answer.raise_for_status()
        path = os.path.join(self.tmpdir, f"{sample['id']}.nii.gz")
        Path(path).write_bytes(answer.content)
        self._open(nib.load(path), dict(sample))
        return sample

    def load_local_volume(self, path: str | Path, node_name: str | None = None) -> None:
        """File > Add Data: the node is named after the file; the module treats it as a session sample."""
        name = node_name or Path(path).name.removesuffix(".gz").removesuffix(".nii")
        self.fetch_info()
        self._open(nib.load(str(path)), {"id": name, "session": True, "path": str(path)})

    def _open(self, volume: nib.Nifti1Image, sample: dict) -> None:
        self.volume, self.sample, self.segments = volume, sample, []
        for name in self.info.get("labels", []):
            self.segment(name)

    def segment(self, name: str) -> Segment:
        for s in self.segments:
            if s.name == name:
                return s
        self.segments.append(Segment(name))
        return self.segments[-1]

    def segment_names(self) -> list[str]:
        return [s.name for s in self.segments]

    def voxels(self, name: str) -> int:
        mask = self.segment(name).mask
        return int(mask.sum()) if mask is not None else 0

    # -- options table ------------------------------------------------------------------------------------------------

    def config(self, section: str, name: str) -> dict:
        return self.info.get(SECTIONS[section], {}).get(name, {}).get("config", {}) or {}

    def shown(self, section: str, name: str) -> dict[str, object]:
        """What the options table shows: text cells, check boxes, combo boxes (their first item)."""
        out = {}
        for key, val in self.config(section, name).items():
            if isinstance(val, dict | list):
                out[key] = list(val)[0] if val else ""
            elif isinstance(val, bool):
                out[key] = val
            else:
                out[key] = str(val) if val else ""
        return out

    def edit(self, section: str, name: str, key: str, text) -> None:
        self.table_edits.setdefault((section, name), {})[key] = text

    def params_from_config(self, section: str, name: str) -> dict:
        """invalidateConfigTable + getParamsFromConfig: every key of the config, coerced by its default's type."""
        cells = {**self.shown(section, name), **self.table_edits.get((section, name), {})}
        params = {}
        for key, default in self.config(section, name).items():
            value = cells[key]
            if isinstance(default, bool):
                value = bool(value)
            elif isinstance(default, int):
                value = int(value) if value else 0
            elif isinstance(default, float):
                value = float(value) if value else 0.0
            elif isinstance(default, list):
                value = value
            params[key] = value
        return params

    # -- run, submit ------------------------------------------------------------------------------------------------

    def session_id(self) -> str | None:
        if not self.sample.get("session"):
            return None
        if not self.sample.get("session_id"):
            path = os.path.join(self.tmpdir, "session-upload.nii.gz")
            nib.save(self.volume, path)
            self.sample["session_id"] = self.client().create_session(path)["session_id"]
        return self.sample["session_id"]

    def run(self, model: str) -> dict | None:
        """Auto Segmentation > Run; returns the answer's params, or None with ``last_error`` set."""
        params = self.params_from_config("infer", model)
        params.update(result_extension=".nrrd", result_dtype="uint8")
        self.last_error = None
        try:
            result_file, answer = self.client().infer(model, self.sample["id"], params, session_id=self.session_id())
        except MONAILabelClientException as error:
            self.last_error = error.msg
            return None
        labels = answer.get("label_names") if answer and answer.get("label_names") else self.info["models"][model].get(
            "labels"
        )
        labels = [name for name in as_label_list(labels) if name != "background"]
        data = read_answer(result_file)
        os.unlink(result_file)
        for i, name in enumerate(labels):
            self.segment(name).mask = data == i + 1
        return answer

    def paint(self, name: str, mask: np.ndarray) -> None:
        """Segment Editor: voxels added to a segment (created if missing)."""
        segment = self.segment(name)
        segment.mask = mask.copy() if segment.mask is None else (segment.mask | mask)

    def export_labelmap(self) -> tuple[np.ndarray, list[dict]]:
        kept = [s for s in self.segments if s.name not in IGNORED]
        data = np.zeros(self.volume.shape[:3], np.uint8)
        info = []
        for i, s in enumerate(kept):
            if s.mask is not None:
                data[s.mask] = i + 1
            info.append({"name": s.name, "idx": self.segments.index(s) + 1})
        return data, info

    def submit_label(self, extra: dict | None = None) -> dict:
        if self.sample.get("session"):  # onUploadImage(init_sample=False): upload the volume under its node name
            path = os.path.join(self.tmpdir, f"upload-{self.sample['id']}.nii.gz")
            nib.save(self.volume, path)
            self.client().upload_image(path, self.sample["id"])
            self.sample["session"] = False
        data, label_info = self.export_labelmap()
        path = os.path.join(self.tmpdir, "label.nii.gz")
        nib.save(nib.Nifti1Image(data, self.volume.affine), path)
        return self.client().save_label(self.sample["id"], path, params={"label_info": label_info, **(extra or {})})

    # -- training -------------------------------------------------------------------------------------------------

    def train(self, model: str) -> dict:
        return self.client().train_start(model, self.params_from_config("train", model))

    def progress(self) -> dict:
        """monitorTraining: the training bar's current/total epochs and the accuracy bar."""
        stats = self.fetch_info().get("train_stats") or {}
        return bar_from_stats(next(iter(stats.values())) if stats else {})


def bar_from_stats(stats: dict) -> dict:
    current = 0 if stats.get("total_time") else stats.get("epoch", 1)
    total = stats.get("total_epochs", 1)
    return {"current": current, "total": total, "percent": max(1, 100 * current / max(total, 1)),
            "best_metric": stats.get("best_metric", 0), "task": stats.get("task")}


def js_number(text: str, integer: bool):
    """parseInt/parseFloat of a text box; NaN is what JSON.stringify turns into null."""
    import re

    match = re.match(r"^\s*[-+]?(\d+)" if integer else r"^\s*[-+]?(\d+\.?\d*([eE][-+]?\d+)?|\.\d+)", str(text))
    if not match:
        return None
    value = int(match.group(0)) if integer else float(match.group(0))
    return None if isinstance(value, float) and math.isnan(value) else value


@dataclass
class OhifPanel:
    """OHIF v3's MONAI Label panel on one series."""

    url: str
    info: dict = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)
    model_label_to_idx: dict = field(default_factory=dict)
    labelmap: np.ndarray | None = None
    edits: dict = field(default_factory=dict)
    notification: str = ""

    def connect(self) -> None:
        self.info = requests.get(f"{self.url}/info/", timeout=30).json()
        names = list(self.info.get("labels") or [])
        for model, meta in self.info.get("models", {}).items():
            labels = meta.get("labels") or {}
            pairs = enumerate(labels, start=1) if isinstance(labels, list) else ((v, k) for k, v in labels.items())
            self.model_label_to_idx[model] = {name: idx for idx, name in pairs}
            names += list(self.model_label_to_idx[model])
        self.segments = sorted(set(names))  # JavaScript's default sort: UTF-16 code units, as Python's for ASCII

    def segment_index(self, name: str) -> int:
        return self.segments.index(name) + 1

    def edit(self, section: str, name: str, key: str, text) -> None:
        """OptionsForm.onChangeConfig: the edited value, parsed by the type of the default."""
        default = self.info[SECTIONS[section]][name]["config"][key]
        if isinstance(default, bool):
            value = bool(text)
        elif isinstance(default, int | float):
            value = js_number(text, isinstance(default, int) or float(default).is_integer())
        else:
            value = text
        self.edits.setdefault(section, {}).setdefault(name, {})[key] = value

    def run(self, model: str, image: str) -> bool:
        params = dict(self.edits.get("infer", {}).get(model, {}))
        params.update(result_extension=".nrrd", result_dtype="uint8", result_compress=False, restore_label_idx=False)
        answer = requests.post(f"{self.url}/infer/{model}", params={"image": image, "output": "image"},
                               data={"params": json.dumps(params)}, timeout=600)
        if answer.status_code != 200:
            self.notification = "Failed to Run Segmentation"
            return False
        self.notification = "Running Segmentation - Successful"
        with tempfile.NamedTemporaryFile(suffix=".nrrd", delete=False) as handle:
            handle.write(answer.content)
        data = read_answer(handle.name)
        os.unlink(handle.name)
        mapping = {idx: self.segment_index(name) for name, idx in self.model_label_to_idx[model].items()}
        out = np.zeros_like(data)
        for model_value, segment_value in mapping.items():
            out[data == model_value] = segment_value
        self.labelmap = out
        return True

    def voxels(self, name: str) -> int:
        return 0 if self.labelmap is None else int((self.labelmap == self.segment_index(name)).sum())

    def update_model(self) -> bool:
        answer = requests.post(f"{self.url}/train/", json=self.edits.get("train", {}), timeout=60)
        self.notification = ("Model update task STARTED" if answer.status_code == 200 else "Failed to RUN training")
        self.last_answer = answer
        return answer.status_code == 200

    def progress(self) -> dict:
        stats = requests.get(f"{self.url}/info/", timeout=30).json().get("train_stats") or {}
        first = next(iter(stats.values())) if stats else {}
        epochs = (0 if first.get("total_time") else first.get("epoch") or 1) if first else 0
        return {"current": epochs, "total": first.get("total_epochs") or 1, "task": first.get("task"),
                "best_metric": first.get("best_metric")}
