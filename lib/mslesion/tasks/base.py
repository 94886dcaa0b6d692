"""What every model's tasks share: the infer task's GPU-peak report and the train task's stats file."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.utils.others.generic import name_to_device, strtobool

from .. import atomic
from ..threads import apply_cpu_thread_policy
from ..unet.inference import gpu_peak_mb, reset_gpu_peak


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
        atomic.write_text(self.stats_path, json.dumps(stats, indent=1), mode=0o644)
