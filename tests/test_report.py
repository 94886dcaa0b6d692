"""The per-lesion report: counts, volumes in mL and centroids in scanner coordinates."""

import numpy as np

from mslesion.report import lesion_report


def test_volumes_and_world_centroids_follow_the_affine():
    label = np.zeros((30, 30, 30), np.uint8)
    label[10:12, 10:12, 10:12] = 1          # 8 voxels, centre voxel (10.5, 10.5, 10.5)
    label[20:23, 5:8, 5:8] = 2              # 27 voxels of new lesion, centre (21, 6, 6)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])  # 12 mm^3 voxels
    affine[:3, 3] = [-10, 0, 5]
    report = lesion_report(label, affine)
    assert report["count"] == 2 and report["new_count"] == 1
    big, small = report["lesions"]
    assert big["voxels"] == 27 and big["new"] and big["volume_ml"] == round(27 * 12 / 1000, 4)
    assert big["centroid_mm"] == [2 * 21 - 10, 2 * 6, 3 * 6 + 5]
    assert small["centroid_voxel"] == [10.5, 10.5, 10.5] and not small["new"]
    assert report["total_volume_ml"] == round((27 + 8) * 12 / 1000, 4)


def test_empty_label_reports_nothing():
    report = lesion_report(np.zeros((5, 5, 5), np.uint8), np.eye(4))
    assert report == {"count": 0, "total_volume_ml": 0, "new_count": 0, "lesions": []}
