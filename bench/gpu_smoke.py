"""GPU smoke check: every task through the real server on CUDA and on the CPU, answers compared.

    PYTHONPATH=lib python -m bench.gpu_smoke [--tasks ...] [--runs 3] [--json out.json]

Serves one MS phantom subject (two sessions, all four sequences), asks each task for the same image with
``device: cpu`` and ``device: cuda``, and compares the answered labels (Dice between the two, voxel counts)
and, for enhancement_prediction, the participant probability and decision. Prints the round trip on each
device (median of ``--runs`` after a warm-up call) and the server's peak GPU memory. Exit status 1 when a
task's answers disagree beyond its tolerance. tests/test_gpu.py runs the same comparison under pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.latency import CASES, infer, machine, working_directory, write_phantom_studies
from mslesion.dev.serverproc import ServerProcess

# Dice between the CUDA and the CPU label that counts as the same answer. bf16 autocast moves a few voxels
# on lesion borders; new_lesion adds a registration whose float path differs between the devices.
MIN_DICE = {"flair_lesion": 0.95, "enhancement": 0.95, "enhancement_prediction": 0.95, "new_lesion": 0.9}
MAX_PROBABILITY_GAP = 0.05  # enhancement_prediction's participant probability, CUDA against CPU


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of the non-zero voxels (1.0 when both are empty: the devices agree there is nothing)."""
    a, b = a > 0, b > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def read_label(path: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


def timed_infer(client, task: str, image: str, params: dict, runs: int) -> tuple[np.ndarray, dict, float]:
    """The label, params and median round trip of ``runs`` calls after a warm-up call."""
    infer(client, task, image, params)
    seconds, label, answer = [], None, {}
    for _ in range(runs):
        started = time.perf_counter()
        path, answer = client.infer(task, image, params)
        seconds.append(time.perf_counter() - started)
        label = read_label(path)
        os.remove(path)
    return label, answer, statistics.median(seconds)


def compare_task(client, task: str, runs: int) -> dict:
    case = CASES[task]
    cpu_label, cpu, cpu_s = timed_infer(client, task, case.image, {**case.params, "device": "cpu"}, runs)
    gpu_label, gpu, gpu_s = timed_infer(client, task, case.image, {**case.params, "device": "cuda"}, runs)
    score = dice(cpu_label, gpu_label)
    out = {
        "image": case.image,
        "cpu_device": cpu.get("device"),
        "cuda_device": gpu.get("device"),
        "dice_cuda_vs_cpu": round(score, 4),
        "min_dice": MIN_DICE[task],
        "cpu_voxels": int((cpu_label > 0).sum()),
        "cuda_voxels": int((gpu_label > 0).sum()),
        "cpu_round_trip_median_s": round(cpu_s, 3),
        "cuda_round_trip_median_s": round(gpu_s, 3),
        "cpu_stages_s": {k: cpu["latencies"][k] for k in ("pre", "infer", "post", "write", "total")},
        "cuda_stages_s": {k: gpu["latencies"][k] for k in ("pre", "infer", "post", "write", "total")},
        "gpu_peak_mb": gpu.get("gpu_peak_mb"),
    }
    problems = []
    if not str(gpu.get("device", "")).startswith("cuda"):
        problems.append(f"asked for cuda, the server answered on {gpu.get('device')}")
    if cpu_label.shape != gpu_label.shape:
        problems.append(f"label shapes differ: cpu {cpu_label.shape}, cuda {gpu_label.shape}")
    if score < MIN_DICE[task]:
        problems.append(f"Dice {score:.4f} < {MIN_DICE[task]}")
    if task == "enhancement_prediction":
        gap = abs(float(cpu["probability"]) - float(gpu["probability"]))
        out["probability_cpu"], out["probability_cuda"] = cpu["probability"], gpu["probability"]
        if gap > MAX_PROBABILITY_GAP:
            problems.append(f"probability differs by {gap:.3f} > {MAX_PROBABILITY_GAP}")
        if cpu["decision"] != gpu["decision"] and gap > 0.01:
            problems.append(f"decision differs: cpu {cpu['decision']}, cuda {gpu['decision']}")
    out["problems"] = problems
    return out


def run(root: Path, tasks: list[str], runs: int, studies: Path | None = None) -> dict:
    if studies is None:
        studies = root / "studies"
        write_phantom_studies(studies, root / "truth", tasks, train=False)
    else:  # the server writes its datastore index beside the images: serve a copy
        shutil.copytree(studies, root / "studies")
        studies = root / "studies"
    server = ServerProcess(studies, root / "model", root / "server.log",
                           env={"MONAI_LABEL_AUTO_UPDATE_SCORING": "false"})
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs, "tasks": {}}
    try:
        from monailabel.client import MONAILabelClient

        client = MONAILabelClient(server.url)
        for task in tasks:
            report["tasks"][task] = compare_task(client, task, runs)
            print(f"{task}: {json.dumps(report['tasks'][task])}", flush=True)
    finally:
        server.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--studies", type=Path, default=None, help="a copy of this folder instead of fresh phantoms")
    parser.add_argument("--workdir", type=Path, default=None, help="keep studies and server log here")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare (this check needs a GPU)")
        return 2
    with working_directory(args.workdir, "gpu-smoke-") as root:
        report = run(root, args.tasks, args.runs, args.studies)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 1 if any(t["problems"] for t in report["tasks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
