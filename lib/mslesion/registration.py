"""Baseline/follow-up registration of same-contrast 3D MRI (FLAIR to FLAIR) in torch, with a SimpleITK reference.

The torch method optimises a rigid, then an affine world transform (optionally a smooth displacement) by Adam
on a multi-scale pyramid, maximising the global normalised cross-correlation (NCC) of the two images inside the
fixed image's head foreground. The same code runs on a GPU or on the CPU.

Conventions, shared by every function here:
- Images are MONAI ``MetaTensor``s, channel first ``(C, X, Y, Z)``, whose ``.affine`` maps voxel indices to
  world millimetres (RAS). Fixed and moving may have different grids, shapes and crops.
- A *world transform* is a 4x4 matrix that maps a point of the FIXED (or ``onto``) world to the corresponding
  point of the MOVING (or ``image``) world: it tells where to *pull* each output voxel from. So
  ``warp(moving, fixed, result.matrix)`` puts the moving image on the fixed grid, and
  ``warp(fixed, moving, np.linalg.inv(result.matrix))`` puts the fixed image on the moving grid.
- Sampling uses ``grid_sample(align_corners=True)``: normalised coordinate -1 is the centre of the first voxel
  and +1 the centre of the last one. Its grid holds coordinates in (Z, Y, X) order for a (X, Y, Z) volume.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor

from .foreground import head_foreground

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
STAGE_LR_MM = {"rigid": 0.15, "affine": 0.08, "deformable": 0.15}  # Adam step, in mm per mm of level spacing
MAX_POINTS = 50_000  # fixed foreground voxels sampled per level: more cost time and add little accuracy (measured)


@dataclass
class RegistrationResult:
    matrix: np.ndarray  # 4x4 float64: a point in FIXED world (mm) -> the corresponding point in MOVING world
    similarity_before: float  # NCC of fixed vs moving with the identity world transform, in fixed foreground
    similarity_after: float  # the same with the registration's transform (and displacement)
    improved: bool  # similarity_after > similarity_before: a registration that made things worse says so
    stages: list[dict]  # per stage and level: name, level_mm, iterations, similarity, seconds
    device: str
    seconds: float
    similarity_level_mm: float = 0.0  # grid spacing at which the two similarities were measured
    displacement: torch.Tensor | None = None  # deformable stage only: (3, X, Y, Z) on the fixed grid, world mm

    def as_report(self) -> dict:
        """JSON-safe summary for an HTTP response (no tensors)."""
        report = {
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
            "similarity_before": round(self.similarity_before, 4),
            "similarity_after": round(self.similarity_after, 4),
            "similarity_level_mm": self.similarity_level_mm,
            "improved": bool(self.improved),
            "stages": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()} for s in self.stages],
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "deformable": self.displacement is not None,
        }
        if self.displacement is not None:
            report["max_displacement_mm"] = round(float(self.displacement.norm(dim=0).max()), 3)
        return report


def ncc(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, mask=None) -> float:
    """Global normalised cross-correlation of two same-shaped arrays, within ``mask`` when given (0 if flat)."""
    a = torch.as_tensor(a).double()
    b = torch.as_tensor(b, device=a.device).double()
    if mask is not None:
        mask = torch.as_tensor(mask, device=a.device).bool()
        a, b = a[mask], b[mask]
    return float(_ncc(a.reshape(-1), b.reshape(-1)))


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / ((a * a).sum() * (b * b).sum()).sqrt().clamp_min(1e-12)


def _affine(image: MetaTensor) -> np.ndarray:
    return torch.as_tensor(image.affine).detach().cpu().numpy().astype(np.float64)


def _normaliser(shape) -> np.ndarray:
    """Voxel index -> grid_sample's normalised coordinate (align_corners=True), per axis, as a 4x4 matrix."""
    n = np.eye(4)
    for axis, size in enumerate(shape):
        n[axis, axis] = 2.0 / max(size - 1, 1)
        n[axis, 3] = -1.0
    return n


def _to_pull(world_to_source: np.ndarray, source_affine: np.ndarray, source_shape) -> np.ndarray:
    """World point of the output -> normalised coordinate in the source volume."""
    return _normaliser(source_shape) @ np.linalg.inv(source_affine) @ world_to_source


def _sample(volume: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border"):
    """Values (C, N) of ``volume`` (C, X, Y, Z) at N points given as normalised (X, Y, Z) coordinates (3, N)."""
    grid = coords.flip(0).T.reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(volume[None], grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.reshape(volume.shape[0], -1)


def warp(image: MetaTensor, onto: MetaTensor, world_transform: np.ndarray, mode: str = "bilinear",
         displacement: torch.Tensor | None = None, padding_mode: str = "border") -> MetaTensor:
    """``image`` resampled onto the grid of ``onto``; ``world_transform`` maps onto-world -> image-world.

    ``displacement`` (3, X, Y, Z) on ``onto``'s grid, in world mm, is added to each onto-world point before the
    transform (as ``register(..., deformable=True)`` returns it). ``mode`` is ``bilinear`` or ``nearest`` (labels).
    Outside ``image``'s field of view the border value is repeated (``padding_mode="zeros"`` gives 0 instead):
    for a z-scored image that is background, not the tissue-like 0.
    """
    data = image.as_tensor().float()
    shape = tuple(onto.shape[1:])
    pull = _to_pull(np.asarray(world_transform, dtype=np.float64), _affine(image), data.shape[1:])
    out_to_source = pull @ _affine(onto) @ np.linalg.inv(_normaliser(shape))  # normalised onto -> normalised image
    swap = np.eye(4)[[2, 1, 0, 3]]  # affine_grid works in (Z, Y, X) order
    theta = torch.as_tensor((swap @ out_to_source @ swap)[:3], dtype=torch.float32, device=data.device)
    grid = F.affine_grid(theta[None], [1, 1, *shape], align_corners=True)
    if displacement is not None:
        linear = torch.as_tensor(pull[:3, :3], dtype=torch.float32, device=data.device)
        shift = torch.einsum("ij,jxyz->xyzi", linear, displacement.to(data.device, torch.float32))
        grid = grid + shift.flip(-1)[None]
    out = F.grid_sample(data[None], grid, mode=mode, padding_mode=padding_mode, align_corners=True)[0]
    meta = {**image.meta, "affine": torch.as_tensor(_affine(onto)), "spatial_shape": np.asarray(shape)}
    return MetaTensor(out, meta=meta)


def _downsample(volume: torch.Tensor, affine: np.ndarray, level_mm: float) -> tuple[torch.Tensor, np.ndarray]:
    """Block means of about ``level_mm`` per side (X, Y, Z) and the affine of the coarser grid."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    k = [max(1, round(level_mm / s)) for s in spacing]
    if k == [1, 1, 1]:
        return volume, affine
    pooled = F.avg_pool3d(volume[None, None], kernel_size=k, stride=k)[0, 0]
    scale = np.eye(4)
    scale[:3, :3] = np.diag(k)
    scale[:3, 3] = (np.asarray(k) - 1) / 2  # a block's centre, in voxels of the finer grid
    return pooled, affine @ scale


def _world(indices: torch.Tensor, affine: np.ndarray) -> torch.Tensor:
    """World coordinates (3, N) of voxel indices (N, 3)."""
    a = torch.as_tensor(affine, dtype=torch.float32, device=indices.device)
    return a[:3, :3] @ indices.T.float() + a[:3, 3:]


def _apply(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """A 4x4 matrix applied to points (3, N); the (3, N) layout keeps the product fast on a CPU."""
    return matrix[:3, :3] @ points + matrix[:3, 3:]


class _Level:
    """One pyramid level: the fixed foreground as a point cloud with standardised values, the moving volume."""

    def __init__(self, fixed, fixed_affine, fixed_mask, moving, moving_affine, level_mm, generator):
        self.level_mm = level_mm
        fixed_l, fixed_affine_l = _downsample(fixed, fixed_affine, level_mm)
        mask_l = _downsample(fixed_mask.float(), fixed_affine, level_mm)[0] >= 0.5
        moving_l, moving_affine_l = _downsample(moving, moving_affine, level_mm)
        self.moving = _with_gradient(moving_l)
        index = mask_l.nonzero()
        if len(index) > MAX_POINTS:
            pick = torch.randperm(len(index), generator=generator)[:MAX_POINTS].sort().values  # sorted: cache-friendly
            index = index[pick.to(index.device)]
        values = fixed_l[tuple(index.T)]
        self.values = (values - values.mean()) / values.std().clamp_min(1e-6)
        self.points = _world(index, fixed_affine_l)
        # where the points sit in the full-resolution fixed grid, which the displacement lattice spans
        to_fixed_grid = _normaliser(fixed.shape) @ np.linalg.inv(fixed_affine) @ fixed_affine_l
        self.fixed_coords = _apply(torch.as_tensor(to_fixed_grid, dtype=torch.float32, device=index.device),
                                   index.T.float())
        pull = torch.as_tensor(_to_pull(np.eye(4), moving_affine_l, moving_l.shape), dtype=torch.float32)
        self.pull = pull.to(index.device)

    def similarity(self, matrix: torch.Tensor, displacement: torch.Tensor | None = None) -> torch.Tensor:
        """NCC of the fixed values with the moving image pulled through a world transform (4x4), after an
        optional displacement (3, N) of the fixed points."""
        points = self.points if displacement is None else self.points + displacement
        return _ncc(self.values, _PullWithGradient.apply(self.moving, _apply(self.pull @ matrix, points)))


def _with_gradient(volume: torch.Tensor) -> torch.Tensor:
    """(4, X, Y, Z): the volume and its central-difference derivatives along normalised X, Y and Z."""
    scale = [(size - 1) / 2 for size in volume.shape]  # voxels per unit of normalised coordinate
    derivatives = torch.gradient(volume)
    return torch.stack([volume, *(d * s for d, s in zip(derivatives, scale, strict=True))])


class _PullWithGradient(torch.autograd.Function):
    """Samples a volume whose derivatives are precomputed (``_with_gradient``) at normalised coordinates (3, N).

    One forward ``grid_sample`` of 4 channels yields the values and their gradient with respect to the
    coordinates, so the backward pass is a product: several times faster on a CPU than ``grid_sample``'s
    own backward, and the gradient is that of the smooth image rather than of the piecewise-linear interpolant.
    """

    @staticmethod
    def forward(ctx, stack: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        sampled = _sample(stack, coords)
        ctx.save_for_backward(sampled[1:])
        return sampled[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (derivatives,) = ctx.saved_tensors
        return None, grad[None] * derivatives


class _Transform(torch.nn.Module):
    """World transform y = L (x - c) + c + t around the fixed foreground's centre of mass c.

    Rigid: L = exp(skew(r)). Affine: L = R0 (I + G) with R0 the rigid result. Rotation and G are stored times
    the foreground's radius so that every parameter is in mm of displacement at the brain's edge: one Adam step
    size then suits them all.
    """

    def __init__(self, centre: torch.Tensor, radius: float, translation: torch.Tensor):
        super().__init__()
        self.register_buffer("centre", centre)
        self.radius = radius
        self.rotation = torch.nn.Parameter(torch.zeros(3, device=centre.device))
        self.translation = torch.nn.Parameter(translation.clone())
        self.general = torch.nn.Parameter(torch.zeros(3, 3, device=centre.device), requires_grad=False)
        self.register_buffer("rigid", torch.eye(3, device=centre.device))

    def rotation_matrix(self) -> torch.Tensor:
        r = self.rotation / self.radius
        zero = torch.zeros((), device=r.device)
        skew = torch.stack([torch.stack([zero, -r[2], r[1]]), torch.stack([r[2], zero, -r[0]]),
                            torch.stack([-r[1], r[0], zero])])
        return torch.linalg.matrix_exp(skew)

    def start_affine(self) -> None:
        """Freeze the rotation found so far and free the 9 linear parameters."""
        with torch.no_grad():
            self.rigid.copy_(self.rotation_matrix())
            self.rotation.zero_()
        self.rotation.requires_grad_(False)
        self.general.requires_grad_(True)

    def forward(self) -> torch.Tensor:
        """The 4x4 world transform (fixed world -> moving world)."""
        eye = torch.eye(3, device=self.centre.device)
        linear = self.rigid @ self.rotation_matrix() @ (eye + self.general / self.radius)
        offset = self.centre + self.translation - linear @ self.centre
        bottom = torch.tensor([[0.0, 0.0, 0.0, 1.0]], device=self.centre.device)
        return torch.cat([torch.cat([linear, offset[:, None]], dim=1), bottom])

    def matrix(self) -> np.ndarray:
        return self().detach().double().cpu().numpy()


class _Displacement(torch.nn.Module):
    """A displacement field (world mm) on a control lattice spanning the fixed grid, interpolated trilinearly."""

    def __init__(self, fixed_shape, fixed_affine: np.ndarray, control_mm: float, device):
        super().__init__()
        extent = (np.asarray(fixed_shape) - 1) * np.linalg.norm(fixed_affine[:3, :3], axis=0)
        lattice = [max(2, math.ceil(e / control_mm) + 1) for e in extent]
        self.field = torch.nn.Parameter(torch.zeros(3, *lattice, device=device))

    def at(self, fixed_coords: torch.Tensor) -> torch.Tensor:
        """Displacements (3, N) at points given by their normalised coordinates (3, N) in the fixed grid."""
        return _sample(self.field, fixed_coords)

    def roughness(self) -> torch.Tensor:
        """Mean squared difference of neighbouring control displacements (membrane energy), in mm^2."""
        return sum((self.field.diff(dim=d) ** 2).mean() for d in (1, 2, 3))

    def dense(self, shape) -> torch.Tensor:
        """The field on the full fixed grid (3, X, Y, Z)."""
        return F.interpolate(self.field[None], size=tuple(shape), mode="trilinear", align_corners=True)[0].detach()


def _foreground(volume: torch.Tensor) -> torch.Tensor:
    """Head foreground of a raw or z-scored volume (shifted so that its background sits near 0)."""
    return head_foreground(volume - volume.min())


def _centre_of_mass(mask: torch.Tensor, affine: np.ndarray) -> torch.Tensor:
    return _world(mask.nonzero(), affine).mean(dim=1)


def _optimise(name, level, params, iterations, loss_fn, stages) -> None:
    """Adam with a cosine-decaying step on one level; appends the stage record."""
    started = time.perf_counter()
    lr = STAGE_LR_MM[name] * level.level_mm
    optimiser = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, iterations, eta_min=0.02 * lr)
    for _ in range(iterations):
        optimiser.zero_grad()
        loss, similarity = loss_fn()
        loss.backward()
        optimiser.step()
        schedule.step()
    with torch.no_grad():
        similarity = float(loss_fn()[1])
    stages.append({"name": name, "level_mm": level.level_mm, "iterations": iterations, "similarity": similarity,
                   "seconds": time.perf_counter() - started})


def _prepare(fixed: MetaTensor, moving: MetaTensor, levels_mm, device, seed):
    fixed_t = fixed.as_tensor()[0].to(device, torch.float32)
    moving_t = moving.as_tensor()[0].to(device, torch.float32)
    fixed_mask = _foreground(fixed_t)
    generator = torch.Generator().manual_seed(seed)
    levels = [_Level(fixed_t, _affine(fixed), fixed_mask, moving_t, _affine(moving), mm, generator)
              for mm in levels_mm]
    return fixed_t, moving_t, fixed_mask, levels


def register(fixed: MetaTensor, moving: MetaTensor, *, affine: bool = True, deformable: bool = False,
             device: str | torch.device | None = None, levels_mm=(4.0, 2.0), iterations=(60, 30),
             control_mm: float = 8.0, smoothness: float = 0.02, seed: int = 0) -> RegistrationResult:
    """Registers ``moving`` to ``fixed``: rigid, then affine (``affine=True``), then a smooth displacement
    (``deformable=True``), each from the coarsest to the finest of ``levels_mm``, ``iterations`` Adam steps per
    level. The deformable stage runs on the finest level only, on a ``control_mm`` lattice, penalised by
    ``smoothness`` times its membrane energy. Similarities are measured on the finest level's grid.

    On a CPU shared with other busy processes, torch's default of one thread per core made the loop about 3x
    slower than ``torch.set_num_threads(1)`` (small ops, threads waiting on each other); see bench/registration.py.
    """
    if len(iterations) != len(levels_mm):
        raise ValueError("give one iteration count per level")
    started = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fixed_t, moving_t, fixed_mask, levels = _prepare(fixed, moving, levels_mm, device, seed)
    finest = levels[-1]

    centre = _centre_of_mass(fixed_mask, _affine(fixed))
    shift = _centre_of_mass(_foreground(moving_t), _affine(moving)) - centre
    radius = float((finest.points - centre[:, None]).square().sum(dim=0).mean().sqrt())
    transform = _Transform(centre, radius, shift)
    with torch.no_grad():
        before = float(finest.similarity(torch.eye(4, device=device)))

    stages: list[dict] = []
    for name in ("rigid", "affine") if affine else ("rigid",):
        if name == "affine":
            transform.start_affine()
        params = [p for p in transform.parameters() if p.requires_grad]
        for level, steps in zip(levels, iterations, strict=True):
            def loss_fn(level=level):
                similarity = level.similarity(transform())
                return -similarity, similarity
            _optimise(name, level, params, steps, loss_fn, stages)

    displacement = None
    if deformable:
        matrix = transform().detach()
        field = _Displacement(fixed_t.shape, _affine(fixed), control_mm, device)

        def loss_fn():
            similarity = finest.similarity(matrix, field.at(finest.fixed_coords))
            return smoothness * field.roughness() - similarity, similarity
        _optimise("deformable", finest, list(field.parameters()), iterations[-1], loss_fn, stages)
        displacement = field.dense(fixed_t.shape)

    after = stages[-1]["similarity"]
    return RegistrationResult(
        matrix=transform.matrix(), similarity_before=before, similarity_after=after, improved=after > before,
        stages=stages, device=str(device), seconds=time.perf_counter() - started,
        similarity_level_mm=finest.level_mm, displacement=displacement,
    )


def similarity(fixed: MetaTensor, moving: MetaTensor, matrix: np.ndarray, level_mm: float = 2.0) -> float:
    """NCC of ``fixed`` and ``moving`` pulled through ``matrix`` (fixed world -> moving world), in the fixed
    foreground, on a ``level_mm`` grid: the measure ``register`` reports, for transforms found elsewhere."""
    device = fixed.device
    level = _prepare(fixed, moving, (level_mm,), device, 0)[3][0]
    with torch.no_grad():
        return float(level.similarity(torch.as_tensor(matrix, dtype=torch.float32, device=device)))


def _to_sitk(image: MetaTensor):
    """A SimpleITK image with the same world geometry; ITK's physical space is LPS, ours is RAS."""
    import SimpleITK as sitk

    lps = RAS_TO_LPS @ _affine(image)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    out = sitk.GetImageFromArray(image.as_tensor()[0].float().cpu().numpy().transpose(2, 1, 0))  # ITK is (z, y, x)
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection([float(v) for v in (lps[:3, :3] / spacing).reshape(-1)])
    out.SetOrigin([float(v) for v in lps[:3, 3]])
    return out


def sitk_register(fixed: MetaTensor, moving: MetaTensor, *, affine: bool = True, levels_mm=(4.0, 2.0),
                  sampling: float = 0.1, seed: int = 0) -> RegistrationResult:
    """Reference on the CPU with SimpleITK: Euler3D, then Affine, correlation metric in the fixed foreground,
    multi-resolution over ``levels_mm``; the metric draws a random ``sampling`` fraction of each level's voxels
    and keeps those in the foreground.

    Both images are first block-averaged to the finest level: ITK's v4 registration smooths but never shrinks
    the moving image, so at 1 mm every level would pay for the gradient of a full-resolution volume.
    """
    import SimpleITK as sitk

    started = time.perf_counter()
    finest = levels_mm[-1]
    fixed_image, moving_image = _to_sitk(fixed), _to_sitk(moving)
    fixed_t, moving_t = (image.as_tensor()[0].float().cpu() for image in (fixed, moving))
    fixed_mask = _foreground(fixed_t)
    mask_image = _to_sitk(MetaTensor(fixed_mask[None].float(), affine=torch.as_tensor(_affine(fixed))))
    fixed_image, moving_image, mask_image = (
        sitk.BinShrink(image, [max(1, round(finest / s)) for s in image.GetSpacing()])
        for image in (fixed_image, moving_image, mask_image)
    )
    mask_image = sitk.BinaryThreshold(mask_image, 0.5, 2.0)

    def run(transform, name):
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsCorrelation()
        method.SetMetricFixedMask(mask_image)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(sampling, seed)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=200,
                                                        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([round(mm / finest) for mm in levels_mm])
        method.SetSmoothingSigmasPerLevel([(mm - finest) / 2 for mm in levels_mm])
        method.SetSmoothingSigmasAreSpecifiedInPhysicalUnits(True)
        method.SetInitialTransform(transform, inPlace=True)
        begun = time.perf_counter()
        method.Execute(fixed_image, moving_image)
        stages.append({"name": name, "level_mm": float(finest), "iterations": method.GetOptimizerIteration(),
                       "similarity": -method.GetMetricValue(), "seconds": time.perf_counter() - begun})

    # the same start as the torch method: rotate about the fixed foreground's centre, centres of mass aligned
    centre = _centre_of_mass(fixed_mask, _affine(fixed)).double().numpy()
    shift = _centre_of_mass(_foreground(moving_t), _affine(moving)).double().numpy() - centre
    flip = RAS_TO_LPS[:3, :3]
    transform = sitk.Euler3DTransform()
    transform.SetCenter((flip @ centre).tolist())
    transform.SetTranslation((flip @ shift).tolist())
    stages: list[dict] = []
    run(transform, "rigid")
    if affine:
        rigid = transform
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(rigid.GetMatrix())
        transform.SetTranslation(rigid.GetTranslation())
        transform.SetCenter(rigid.GetCenter())
        run(transform, "affine")
    matrix = RAS_TO_LPS @ _itk_matrix(transform) @ RAS_TO_LPS
    before = similarity(fixed, moving, np.eye(4), finest)
    after = similarity(fixed, moving, matrix, finest)
    return RegistrationResult(matrix=matrix, similarity_before=before, similarity_after=after, improved=after > before,
                              stages=stages, device="cpu (SimpleITK)", seconds=time.perf_counter() - started,
                              similarity_level_mm=float(finest))


def _itk_matrix(transform) -> np.ndarray:
    """The 4x4 homogeneous matrix of an ITK matrix-offset transform (LPS mm -> LPS mm)."""
    out = np.eye(4)
    out[:3, :3] = np.asarray(transform.GetMatrix()).reshape(3, 3)
    centre = np.asarray(transform.GetCenter())
    out[:3, 3] = np.asarray(transform.GetTranslation()) + centre - out[:3, :3] @ centre
    return out
