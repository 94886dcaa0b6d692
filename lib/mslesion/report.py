"""Per-lesion report returned with a segmentation: how many lesions, how much, and where."""

from __future__ import annotations

import numpy as np

from .metrics import lesion_components


def _crop_to_lesions(label: np.ndarray, values: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The bounding box of the lesion voxels and its corner: labelling a whole brain is 10x slower than a box."""
    nonzero = label > 0
    if not nonzero.any():
        return label[:0, :0, :0], np.zeros(3)
    corner, upper = [], []
    for axis in range(3):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        corner.append(hits[0])
        upper.append(hits[-1] + 1)
    box = tuple(slice(a, b) for a, b in zip(corner, upper, strict=True))
    return label[box], np.asarray(corner, dtype=float)


def lesion_report(label: np.ndarray, affine: np.ndarray, min_voxels: int = 1, values: tuple[int, ...] = (1, 2)) -> dict:
    """Count, total volume (mL) and per-lesion volume and centroid (scanner RAS mm and voxel) of a label map.

    ``values`` are the label values counted as lesion (1 = lesion, 2 = new lesion by the project's convention);
    each lesion's ``new`` flag says whether any of its voxels is a new-lesion voxel.
    """
    label, offset = _crop_to_lesions(np.asarray(label), values)
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
