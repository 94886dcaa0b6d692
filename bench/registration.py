"""Registration benchmark: torch (CPU, and CUDA when there is one) against SimpleITK on a phantom visit pair.

    PYTHONPATH=lib .venv/bin/python -m bench.registration [--seed 0] [--runs 3] [--json out.json]

Two MS phantom sessions of one subject, each cropped to the head and z-scored like the pipeline's input (1 mm,
about 160 x 190 x 170 voxels). Cases: the follow-up as it is (head motion of 1-3 degrees and 1-3 mm, known
exactly from the lesion centres), and the follow-up moved further by a known affine (6 and 4 degree rotations,
3-4 % scaling, shear, 10 mm). For each method: seconds (median of --runs), the largest landmark error (mm) over
the brain's bounding-box corners and 24 points inside, and the NCC before/after. Target: a few seconds on 2 CPU
cores for the whole registration.
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np
import torch
from monai.data import MetaTensor
from scipy.spatial.transform import Rotation

from mslesion.foreground import head_foreground
from mslesion.phantoms import PhantomOptions, make_subject
from mslesion.registration import register, sitk_register
from mslesion.unet.pretrain import machine

EXTRA = np.eye(4)
EXTRA[:3, :3] = Rotation.from_euler("xz", [6, 4], degrees=True).as_matrix() @ [[1.04, 0.03, 0], [0, 0.97, 0],
                                                                                [0, 0.02, 1.03]]
EXTRA[:3, 3] = [6.0, -5.0, 8.0]


def prepared(nifti) -> MetaTensor:
    """Float32 (1, X, Y, Z), cropped to the head with a 4-voxel margin, z-scored over the head."""
    data = torch.as_tensor(nifti.get_fdata(dtype=np.float32))
    mask = head_foreground(data)
    index = mask.nonzero()
    lo, hi = (index.min(dim=0).values - 4).clamp_min(0), index.max(dim=0).values + 5
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    data, mask = data[crop], mask[crop]
    affine = nifti.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo.numpy()
    return MetaTensor(((data - data[mask].mean()) / data[mask].std())[None], affine=torch.as_tensor(affine))


def session_motion(first: list[dict], second: list[dict]) -> np.ndarray:
    """First-session world -> second-session world, fitted (rigid Procrustes) to the centres of shared lesions."""
    before = {lesion.get("id"): lesion["centre_mm"] for lesion in first}
    pairs = [(before[lesion["id"]], lesion["centre_mm"]) for lesion in second if lesion.get("id") in before]
    p, q = (np.array(side) for side in zip(*pairs, strict=True))
    u, _, vt = np.linalg.svd((p - p.mean(0)).T @ (q - q.mean(0)))
    rotation = vt.T @ np.diag([1, 1, np.linalg.det(vt.T @ u.T)]) @ u.T
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = rotation, q.mean(0) - rotation @ p.mean(0)
    return out


def landmarks(image: MetaTensor) -> np.ndarray:
    index = np.argwhere(head_foreground(image[0] - image.min()).numpy())
    lo, hi = index.min(axis=0), index.max(axis=0)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    inside = index[np.random.default_rng(0).choice(len(index), 24, replace=False)]
    return np.c_[np.concatenate([corners, inside]), np.ones(32)] @ np.asarray(image.affine).T


def measure(method, fixed, moving, truth, points, runs: int) -> dict:
    results = [method(fixed, moving) for _ in range(runs)]
    result = results[-1]
    error = np.linalg.norm((points @ result.matrix.T - points @ truth.T)[:, :3], axis=1)
    return {
        "seconds_median": round(statistics.median(r.seconds for r in results), 3),
        "landmark_error_max_mm": round(float(error.max()), 3),
        "landmark_error_mean_mm": round(float(error.mean()), 3),
        "similarity_before": round(result.similarity_before, 4),
        "similarity_after": round(result.similarity_after, 4),
        "improved": result.improved,
        "stage_seconds": [round(s["seconds"], 3) for s in result.stages],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    first, second = make_subject("ms", "01", seed=args.seed, sessions=2, options=PhantomOptions(sequences=("FLAIR",)))
    fixed, moving = prepared(first.images["FLAIR"]), prepared(second.images["FLAIR"])
    motion = session_motion(first.lesions, second.lesions)
    moved = MetaTensor(moving.as_tensor(), affine=torch.as_tensor(EXTRA @ np.asarray(moving.affine)))
    cases = {"session pair": (moving, motion), "session pair + known affine": (moved, EXTRA @ motion)}
    points = landmarks(fixed)
    threads = torch.get_num_threads()

    def torch_on(device: str, n_threads: int | None = None):
        def run(f, m):
            torch.set_num_threads(n_threads or threads)
            try:
                return register(f, m, device=device)
            finally:
                torch.set_num_threads(threads)
        return run

    methods = {f"torch cpu ({threads} threads)": torch_on("cpu"), "torch cpu (1 thread)": torch_on("cpu", 1),
               "SimpleITK cpu": sitk_register}
    if torch.cuda.is_available():
        register(fixed, moving, device="cuda")  # warm-up: CUDA context and kernels
        methods["torch cuda"] = torch_on("cuda")

    out = {"machine": machine(), "fixed_shape": list(fixed.shape[1:]), "moving_shape": list(moving.shape[1:]),
           "cases": {}}
    print(out["machine"], "| fixed", out["fixed_shape"], "moving", out["moving_shape"])
    for case, (image, truth) in cases.items():
        out["cases"][case] = {}
        for name, method in methods.items():
            figures = measure(method, fixed, image, truth, points, args.runs)
            out["cases"][case][name] = figures
            print(f"{case:28s} {name:24s} {figures['seconds_median']:6.2f} s  landmark error max "
                  f"{figures['landmark_error_max_mm']:.2f} mm (mean {figures['landmark_error_mean_mm']:.2f})  NCC "
                  f"{figures['similarity_before']:.3f} -> {figures['similarity_after']:.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=2)


if __name__ == "__main__":
    main()
