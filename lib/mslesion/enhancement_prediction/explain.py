"""What drove an answer: the top-scoring slices and the lesions in them.

Given the slice-wise scores of a study's chosen 3 mm slices, the answer names the ``TOP_SLICES`` highest-scoring
slices (with their index on the FLAIR's own grid) and the lesions in them: the 3D connected components (26-connected)
of the undilated lesion mask that reach into one of those slices, each with its centroid in scanner coordinates
(NIfTI world, RAS mm), its volume (mm^3, the whole component) and the highest score of a slice it reaches into.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TOP_SLICES = 5
MAX_LESIONS = 10


def top_slices(rows: list[dict], k: int = TOP_SLICES) -> list[dict]:
    """The ``k`` rows (one per scored slice: ``score``, ``index`` on the FLAIR grid...) with the highest scores."""
    return sorted(rows, key=lambda r: (-r["score"], r["index_ras_1mm"]))[:k]


def driving_lesions(lesion: np.ndarray, ras_affine: np.ndarray, slabs: list[int], scores: list[float],
                    thickness: int, top: list[int], limit: int = MAX_LESIONS) -> list[dict]:
    """Lesions (components of ``lesion``, (X, Y, Z) on the RAS 1 mm grid whose world affine is ``ras_affine``) that
    reach into the ``top`` slabs; ``slabs``/``scores`` are every scored slab and its score. Highest score first."""
    mask = np.asarray(lesion) > 0
    if not mask.any() or not top:
        return []
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    slab_of_z = np.arange(mask.shape[-1]) // thickness
    score_of = dict(zip((int(s) for s in slabs), (float(v) for v in scores), strict=True))
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(ras_affine, dtype=np.float64)[:3, :3])))
    wanted = set()
    for slab in top:
        z = slice(int(slab) * thickness, int(slab) * thickness + thickness)
        wanted |= set(np.unique(components[..., z]).tolist())
    wanted.discard(0)
    out = []
    for number, box in enumerate(ndimage.find_objects(components), start=1):
        if number not in wanted or box is None:
            continue
        voxels = np.argwhere(components[box] == number) + np.array([b.start for b in box])
        reached = {int(s) for s in np.unique(slab_of_z[voxels[:, 2]])}
        best = max((score_of[s] for s in reached if s in score_of), default=float("nan"))
        centre = np.asarray(ras_affine, dtype=np.float64) @ np.append(voxels.mean(axis=0), 1.0)
        out.append({"centroid_mm": [round(float(v), 1) for v in centre[:3]],
                    "volume_mm3": round(len(voxels) * voxel_mm3, 1),
                    "max_slice_score": round(best, 4)})
    out.sort(key=lambda r: (-r["max_slice_score"], -r["volume_mm3"]))
    return out[:limit]
