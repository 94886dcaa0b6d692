"""The enhancement-prediction recipe as data: slice geometry, network size and training schedule in one place,
shared by pretraining, cross-validation, fine-tuning from saved labels and inference."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from ..studies import FLAIR, T1, T1_POST, T2


@dataclass(frozen=True)
class PredictionRecipe:
    task: str = "enhancement_prediction"
    inputs: tuple[str, ...] = (FLAIR, T1, T2)     # FLAIR is the image a user opens; T1w, T2w are its companions
    truth: str = T1_POST                           # whose label (1 = enhancing lesion) gives the ground truth
    lesion_values: tuple[int, ...] = (1, 2)        # FLAIR label values that are T2-hyperintense lesion
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    dilation: int = 3                              # lesion mask dilated by this many voxels (a ball)
    slab_slices: int = 3                           # 1 mm slices averaged into one 3 mm axial slice (the paper's)
    n_slices: int = 32                             # 3 mm slices per study, those with most masked voxels
    fov_mm: float = 192.0                          # square in-plane field of view, centred on the head
    slice_size: int = 128                          # the field of view resized to slice_size^2 (1.5 mm pixels)
    min_enhancing_voxels: int = 7                  # an enhancing region in a slice counts from this size
    # slice classifier
    width: float = 0.0625                          # VGG16 channel multiplier; 1 = torchvision's vgg16
    batch_norm: bool = False
    head_hidden: int = 64
    head_dropout: float = 0.5
    # participant net
    participant_hidden: int = 4
    participant_dropout: float = 0.25
    # >= 2: it learns from out-of-fold slice scores of this many classifiers (training.out_of_fold_scores); 0: from
    # the training studies' own scores (the paper's). Out-of-fold measured no better on these phantoms (2026-12-07).
    participant_folds: int = 0
    # training (stage 0 is this project's addition: the small VGG has no ImageNet base to start from)
    batch_size: int = 32
    scratch_epochs: int = 40
    scratch_lr: float = 1e-3                       # Adam, whole network, from scratch
    head_epochs: int = 20
    head_lr: float = 1e-3                          # Adam, dense head on frozen bottleneck features
    finetune_epochs: int = 10
    finetune_lr: float = 1e-4                      # SGD on the last convolutional block + head
    finetune_momentum: float = 0.9
    participant_epochs: int = 2000
    participant_lr: float = 1e-3                   # Adam
    val_fraction: float = 0.25                     # of the subjects, for epoch choice and the Youden thresholds
    min_labelled_studies: int = 4                  # training from saved labels needs at least this many studies
    longitudinal: bool = False                     # one session (the app resolves a baseline only when True)
    # optional 4th input channel (default off): the FLAIR minus the subject's previous session's FLAIR registered
    # onto it (rigid + affine), zero where there is no earlier session. New or enlarging lesions are the strongest
    # non-contrast sign of activity; the app finds the previous session itself (this is not ``longitudinal``).
    previous_session: bool = False

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> PredictionRecipe:
        """A recipe from stored metadata (unknown keys ignored, tuples restored from JSON lists)."""
        known = {f.name: f for f in fields(cls)}
        kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
        return cls(**kept)

    def with_overrides(self, request: dict) -> PredictionRecipe:
        """The recipe with the schedule fields a training request may change (epochs, learning rates...)."""
        allowed = {"scratch_epochs", "head_epochs", "finetune_epochs", "participant_epochs", "scratch_lr", "head_lr",
                   "finetune_lr", "participant_lr", "batch_size", "val_fraction", "participant_folds"}
        changes = {k: type(getattr(self, k))(v) for k, v in request.items() if k in allowed and v is not None}
        return replace(self, **changes)


ENHANCEMENT_PREDICTION = PredictionRecipe()
