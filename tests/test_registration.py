"""Registration on phantom FLAIRs: known transforms recovered to under 1 mm at brain landmarks, by torch and by
SimpleITK; the matrix convention of ``warp``; honest similarity reporting when registration cannot help."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage as ndi
from scipy.spatial.transform import Rotation

from mslesion.foreground import head_foreground
from mslesion.phantoms import PhantomOptions, make_subject
from mslesion.registration import ncc, register, sitk_register, warp


def homogeneous(linear, translation) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = linear, translation
    return out


# fixed world -> moving world: rotations of 6 and 4 degrees, 3-4 % scaling, 2-3 % shear, 5-8 mm shift
KNOWN = homogeneous(
    Rotation.from_euler("xz", [6, 4], degrees=True).as_matrix() @ [[1.04, 0.03, 0], [0, 0.97, 0], [0, 0.02, 1.03]],
    [6.0, -5.0, 8.0],
)


def prepared(nifti) -> MetaTensor:
    """The pipeline's view of a study: float32 (1, X, Y, Z), cropped to the head with a margin, z-scored."""
    data = torch.as_tensor(nifti.get_fdata(dtype=np.float32))
    mask = head_foreground(data)
    index = mask.nonzero()
    lo, hi = (index.min(dim=0).values - 4).clamp_min(0), index.max(dim=0).values + 5
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    data, mask = data[crop], mask[crop]
    data = (data - data[mask].mean()) / data[mask].std()
    affine = nifti.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ lo.numpy()
    return MetaTensor(data[None], affine=torch.as_tensor(affine))


def affine_of(image) -> np.ndarray:
    return np.asarray(image.affine, dtype=np.float64)


def noisy(data: torch.Tensor, sd: float, seed: int) -> torch.Tensor:
    return data + sd * torch.randn(data.shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch's two threads on two cores shared with concurrent test runs wait on each other at every small op:
    the optimisation loops ran 3x slower (measured). One thread here; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sessions():
    """Two sessions of one MS phantom subject: each cropped on its own, different noise, bias and head position."""
    pair = make_subject("ms", "01", seed=0, sessions=2, options=PhantomOptions(sequences=("FLAIR",)))
    return [(prepared(s.images["FLAIR"]), s.lesions) for s in pair]


@pytest.fixture(scope="module")
def fixed(sessions) -> MetaTensor:
    return sessions[0][0]


@pytest.fixture(scope="module")
def landmarks(fixed) -> np.ndarray:
    """World points (N, 4): the 8 corners of the brain's bounding box and 24 points inside the brain."""
    index = np.argwhere(head_foreground(fixed[0] - fixed.min()).numpy())
    lo, hi = index.min(axis=0), index.max(axis=0)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    inside = index[np.random.default_rng(0).choice(len(index), 24, replace=False)]
    return np.c_[np.concatenate([corners, inside]), np.ones(32)] @ affine_of(fixed).T


def landmark_error(matrix: np.ndarray, truth: np.ndarray, landmarks: np.ndarray) -> float:
    """Largest distance (mm) between where the two transforms send the landmarks."""
    return float(np.linalg.norm((landmarks @ matrix.T - landmarks @ truth.T)[:, :3], axis=1).max())


@pytest.fixture(scope="module")
def moved_by_affine(fixed) -> MetaTensor:
    """The fixed image, with fresh noise, placed in the moving world by changing its affine only."""
    return MetaTensor(noisy(fixed.as_tensor(), 0.05, 1), affine=torch.as_tensor(KNOWN @ affine_of(fixed)))


@pytest.fixture(scope="module")
def moving_grid() -> np.ndarray:
    """A different grid for the moving image: 1 mm, rotated 15 degrees, x stored right-to-left, another crop."""
    linear = Rotation.from_euler("z", 15, degrees=True).as_matrix() @ np.diag([-1.0, 1.0, 1.0])
    shape = np.array([176, 206, 172])
    return homogeneous(linear, KNOWN[:3, 3] - linear @ (shape - 1) / 2 + [2.0, 5.0, 10.0]), tuple(shape)


@pytest.fixture(scope="module")
def resampled(fixed, moving_grid) -> MetaTensor:
    """The fixed image resampled (by scipy, not by ``warp``) so that it sits in the moving world, plus noise."""
    affine, shape = moving_grid
    voxel_map = np.linalg.inv(affine_of(fixed)) @ np.linalg.inv(KNOWN) @ affine  # moving voxel -> fixed voxel
    data = ndi.affine_transform(fixed[0].numpy(), voxel_map[:3, :3], voxel_map[:3, 3], output_shape=shape, order=1,
                                mode="nearest")
    return MetaTensor(noisy(torch.as_tensor(data)[None], 0.05, 2), affine=torch.as_tensor(affine))


@pytest.fixture(scope="module")
def torch_resampled(fixed, resampled):
    return register(fixed, resampled)


def test_ncc_basics():
    a = torch.arange(27.0).reshape(3, 3, 3)
    assert ncc(a, 2 * a + 1) == pytest.approx(1.0)
    assert ncc(a, -a) == pytest.approx(-1.0)
    mask = torch.zeros_like(a, dtype=torch.bool)
    mask[0] = True
    b = a.clone()
    b[1:] = torch.rand(2, 3, 3)
    assert ncc(a, b, mask) == pytest.approx(1.0)
    assert ncc(a, b) < 0.99


def test_warp_translation_moves_a_blob_to_the_predicted_voxels():
    """Pulling through x -> x + t moves content by -t: a blob at world b lands at b - t."""
    spacing = np.array([2.0, 1.0, 1.5])
    affine = homogeneous(np.diag(spacing), [-30.0, 10.0, 4.0])
    data = torch.zeros(1, 32, 40, 36)
    data[0, 10, 12, 14] = 1.0
    image = MetaTensor(data, affine=torch.as_tensor(affine))
    shift = np.array([4.0, -3.0, 3.0])
    out = warp(image, image, homogeneous(np.eye(3), shift), mode="nearest", padding_mode="zeros")
    assert out.shape == image.shape and np.allclose(affine_of(out), affine)
    expected = np.array([10, 12, 14]) - shift / spacing
    assert np.argwhere(out[0].numpy() == 1.0).tolist() == [expected.astype(int).tolist()]

    # onto a grid stored the other way round along y (origin moved so that the world is the same box)
    flipped = affine @ homogeneous(np.diag([1.0, -1.0, 1.0]), [0, 39, 0])
    onto = MetaTensor(torch.zeros(1, 32, 40, 36), affine=torch.as_tensor(flipped))
    out = warp(image, onto, homogeneous(np.eye(3), shift), mode="nearest", padding_mode="zeros")
    assert np.argwhere(out[0].numpy() == 1.0).tolist() == [[expected[0], 39 - expected[1], expected[2]]]


def test_warp_reproduces_an_independent_resampling(fixed, resampled, moving_grid):
    """warp(fixed, moving, inv(T)) pulls the fixed image onto the moving grid exactly as scipy did."""
    out = warp(fixed, resampled, np.linalg.inv(KNOWN))
    assert out.shape == resampled.shape and np.allclose(affine_of(out), moving_grid[0])
    difference = (out - resampled).abs()[0]
    assert float(difference.median()) < 0.06 and ncc(out, resampled) > 0.99  # only the added noise differs


def test_torch_recovers_a_known_affine_world_change(fixed, moved_by_affine, landmarks):
    result = register(fixed, moved_by_affine)
    assert landmark_error(result.matrix, KNOWN, landmarks) < 1.0
    assert result.similarity_after > result.similarity_before + 0.1 and result.improved
    assert [(s["name"], s["level_mm"]) for s in result.stages] == [
        ("rigid", 4.0), ("rigid", 2.0), ("affine", 4.0), ("affine", 2.0)
    ]


def test_torch_recovers_a_known_transform_across_different_grids(torch_resampled, landmarks):
    assert landmark_error(torch_resampled.matrix, KNOWN, landmarks) < 1.0
    assert torch_resampled.similarity_after > 0.95 > torch_resampled.similarity_before
    assert torch_resampled.improved
    report = json.loads(json.dumps(torch_resampled.as_report()))
    assert report["improved"] is True and report["deformable"] is False and len(report["matrix"]) == 4


def test_registered_images_line_up_both_ways(fixed, resampled, torch_resampled):
    """The pipeline's direction: the fixed (baseline) pulled onto the moving (follow-up) grid with inv(matrix)."""
    mask = head_foreground(resampled[0] - resampled.min())
    onto_moving = warp(fixed, resampled, np.linalg.inv(torch_resampled.matrix))
    assert ncc(onto_moving[0], resampled[0], mask) > 0.97
    unregistered = warp(fixed, resampled, np.eye(4))
    assert ncc(unregistered[0], resampled[0], mask) < 0.8
    onto_fixed = warp(resampled, fixed, torch_resampled.matrix)
    assert ncc(onto_fixed[0], fixed[0], head_foreground(fixed[0] - fixed.min())) > 0.97


def test_sitk_reference_recovers_it_and_agrees_with_torch(fixed, resampled, torch_resampled, landmarks):
    reference = sitk_register(fixed, resampled)
    assert landmark_error(reference.matrix, KNOWN, landmarks) < 1.0
    assert reference.improved and reference.similarity_after > 0.95
    assert landmark_error(reference.matrix, torch_resampled.matrix, landmarks) < 1.0
    assert abs(reference.similarity_after - torch_resampled.similarity_after) < 0.01


def test_real_session_pair_is_registered_to_the_head_motion(sessions, landmarks):
    """Session 2 differs by head motion, noise, bias field and new lesions; the motion is known exactly from
    the centres of the lesions present in both sessions (rigid Procrustes fit)."""
    (fixed, first), (moving, second) = sessions
    before = {lesion.get("id"): lesion["centre_mm"] for lesion in first}
    pairs = [(before[lesion["id"]], lesion["centre_mm"]) for lesion in second if lesion.get("id") in before]
    p, q = (np.array(side) for side in zip(*pairs, strict=True))
    u, _, vt = np.linalg.svd((p - p.mean(0)).T @ (q - q.mean(0)))
    rotation = vt.T @ np.diag([1, 1, np.linalg.det(vt.T @ u.T)]) @ u.T
    motion = homogeneous(rotation, q.mean(0) - rotation @ p.mean(0))
    assert np.abs(p @ rotation.T + motion[:3, 3] - q).max() < 0.01  # the lesion centres do fit a rigid motion
    assert landmark_error(np.eye(4), motion, landmarks) > 2.0

    result = register(fixed, moving)
    assert landmark_error(result.matrix, motion, landmarks) < 1.0
    assert result.improved


def test_an_already_perfect_alignment_is_not_reported_as_improved(fixed, landmarks):
    """Moving == fixed: the identity is optimal, so the optimiser can only match it, never beat it."""
    result = register(fixed, fixed)
    assert result.similarity_before == pytest.approx(1.0, abs=1e-5)
    assert result.similarity_after <= result.similarity_before
    assert not result.improved and result.as_report()["improved"] is False
    assert landmark_error(result.matrix, np.eye(4), landmarks) < 0.5


def test_pure_noise_reports_no_similarity(fixed):
    noise = MetaTensor(noisy(torch.zeros(1, 150, 170, 140), 1.0, 3), affine=torch.eye(4, dtype=torch.float64))
    result = register(fixed, noise)
    assert abs(result.similarity_before) < 0.05 and result.similarity_after < 0.1
    assert result.improved == (result.similarity_after > result.similarity_before)


def test_deformable_stage_follows_a_local_bump(fixed):
    """A smooth 3 mm bump along x that no affine transform can model; the displacement field takes it up."""
    pooled = torch.nn.functional.avg_pool3d(fixed.as_tensor()[None], 2)[0]  # 2 mm keeps this test quick
    affine = affine_of(fixed) @ homogeneous(2 * np.eye(3), [0.5, 0.5, 0.5])
    small = MetaTensor(pooled, affine=torch.as_tensor(affine))
    centre = np.array(pooled.shape[1:]) // 2
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in pooled.shape[1:]], indexing="ij"))
    bump = torch.zeros(3, *pooled.shape[1:])
    bump[0] = torch.as_tensor(3.0 * np.exp(-(((grid - centre[:, None, None, None]) * 2.0) ** 2).sum(0) / 450))
    moving = warp(small, small, np.eye(4), displacement=bump)  # moving(x) = fixed(x + bump(x))

    result = register(small, moving, deformable=True)
    assert result.displacement.shape == (3, *pooled.shape[1:])
    affine_only, deformable = result.stages[-2:]
    assert (affine_only["name"], deformable["name"]) == ("affine", "deformable")
    assert result.similarity_after == deformable["similarity"] > affine_only["similarity"]
    world = affine @ np.r_[centre, 1.0]
    found = result.matrix @ np.r_[world[:3] + result.displacement[(slice(None), *centre)].numpy(), 1.0] - world
    assert found[0] < -1.0 and abs(found[1]) < 0.5 and abs(found[2]) < 0.5  # back by part of the bump, along x
    assert result.as_report()["max_displacement_mm"] < 4.0
