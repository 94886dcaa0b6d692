"""Per-lesion report returned with a segmentation: how many lesions, how much, and where."""

from __future__ import annotations

import numpy as np

from .metrics import crop_to_mask, lesion_components


def lesion_report(label: np.ndarray, affine: np.ndarray, min_voxels: int = 1, values: tuple[int, ...] = (1, 2)) -> dict:
    """Count, total volume (mL) and per-lesion volume and centroid (scanner RAS mm and voxel) of a label map.

    ``values`` are the label values counted as lesion (1 = lesion, 2 = new lesion by the project's convention);
    each lesion's ``new`` flag says whether any of its voxels is a new-lesion voxel.
    """
    label, offset = crop_to_mask(np.asarray(label))
    mask = np.isin(label, values)
    components, count = lesion_components(mask, min_voxels)
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    lesions = []
    if count:
        # per-lesion sums over the lesion voxels only (bincount): scipy's per-label measurements scan the whole
        # box once per statistic and took ~0.5 s of the write stage on a 2-core CPU
        where = np.nonzero(components)
        ids = components[where]
        sizes = np.bincount(ids, minlength=count + 1)[1:]
        centroids = np.stack([np.bincount(ids, weights=axis, minlength=count + 1)[1:] for axis in where], axis=1)
        centroids = centroids / sizes[:, None]
        has_new = np.bincount(ids, weights=label[where] == 2, minlength=count + 1)[1:] > 0
        for i, (size, centre, new) in enumerate(zip(sizes, centroids, has_new, strict=True), start=1):
            centre = np.asarray(centre) + offset
            world = affine @ np.array([*centre, 1.0])
            lesions.append(
                {
                    "id": i,
                    "voxels": int(size),
                    "volume_ml": round(float(size) * voxel_ml, 4),
                    "centroid_mm": [round(float(c), 1) for c in world[:3]],
                    "centroid_voxel": [round(float(c), 1) for c in centre],
                    "new": bool(new),
                }
            )
        lesions.sort(key=lambda row: -row["volume_ml"])
    return {
        "count": count,
        "total_volume_ml": round(sum(row["volume_ml"] for row in lesions), 4),
        "new_count": sum(row["new"] for row in lesions),
        "lesions": lesions,
    }
