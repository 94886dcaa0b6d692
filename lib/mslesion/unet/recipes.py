"""Training and inference recipes of the U-Net tasks, as data (the nnU-Net "plans" idea).

One recipe per task, shared by pretraining, fine-tuning, inference and evaluation. ``PAPER`` holds the
published schedule (UCSF, Frontiers 2023) for a GPU; ``for_cpu`` shortens it to what a 2-core CPU can do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ..studies import FLAIR, T1, T1_POST


@dataclass(frozen=True)
class Recipe:
    task: str
    inputs: tuple[str, ...]                 # sequences stacked as channels; the first is the one a user opens
    positive_values: tuple[int, ...]        # values of a saved label that count as this task's lesions
    output_value: int                       # value written into the answered label for a predicted lesion
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    patch: tuple[int, int, int] = (96, 96, 96)
    patches_per_study: int = 60             # half of them centred on lesion, half lesion-free
    augmentations: int = 3                  # augmented passes over each study's patches per epoch
    epochs: int = 30
    lr: float = 1e-5                        # the paper's fine-tuning learning rate (GPU schedule: 30 epochs)
    pretrain_lr: float = 1e-3               # de novo training of the defaults on phantom cohorts
    weight_decay: float = 1e-4              # AdamW; the learning rate decays as poly(0.9) over the planned steps
    loss: str = "dice_ce"                   # Dice (lesion channel only, pooled over the batch) + cross-entropy
    batch_size: int = 4
    elastic_prob: float = 0.5
    # share of the lesion-free crops centred on the brightest tenth of non-lesion tissue (hard negatives); 0: all
    # centred anywhere in the cropped head, where a whole-head study's centres fall mostly outside the brain. A
    # training request may set it; no default uses it yet (docs/site_adaptation.md: not better than noise so far)
    bright_negative_share: float = 0.0
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)   # 5 levels: 4 down- and 4 up-sampling blocks
    # batch norm: at inference the running statistics are used, so one whole-study window sees exactly the
    # normalisation the training patches saw (instance norm would re-normalise over a window 20x a patch)
    norm: str = "batch"
    dropout: float = 0.1
    threshold: float = 0.5                  # lesion probability above which a voxel is lesion (tuned, stored)
    validation_ema: float = 0.5             # the best epoch is picked on an EMA of the pooled validation F1
    infer_roi: tuple[int, int, int] = (160, 192, 160)  # sliding window covering a cropped 1 mm brain
    sw_overlap: float = 0.25
    sw_batch_size: int = 1
    min_lesion_voxels: int = 3              # smaller answered components are dropped (tuned, stored)
    # test-time augmentation: spatial axes (of the RAS grid the model works on) along which the mirrored study is
    # predicted too and the logits averaged; chosen on validation with the threshold and stored with the weights
    mirror_axes: tuple[int, ...] = ()
    score_min_voxels: int = 3               # true lesions smaller than this are not counted by the metrics
    min_labelled_studies: int = 2           # one to train on and one to validate with
    val_fraction: float = 0.2
    longitudinal: bool = False              # the input is follow-up minus the registered baseline (new_lesion)
    # longitudinal only: the follow-up itself is a channel too, before the subtraction: a new lesion is bright on
    # the follow-up AND on the subtraction, residual misregistration at an edge only on the subtraction
    with_followup: bool = False
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def with_overrides(self, request: dict) -> Recipe:
        """The recipe with the numeric fields a training request may change (epochs, lr, patches...)."""
        allowed = {"epochs", "lr", "patches_per_study", "augmentations", "batch_size", "elastic_prob", "val_fraction",
                   "bright_negative_share"}
        aliases = {"max_epochs": "epochs", "learning_rate": "lr"}
        changes = {}
        for key, value in request.items():
            key = aliases.get(key, key)
            if key in allowed and value is not None:
                changes[key] = type(getattr(self, key))(value)
        return replace(self, **changes)


def for_cpu(recipe: Recipe) -> Recipe:
    """The schedule a 2-core CPU finishes in minutes: 64^3 patches (a quarter of the compute of 96^3), fewer of
    them, one augmented pass without elastic deformation, a few epochs. Fine-tuning a few dozen steps at the
    paper's lr of 1e-5 cannot move the weights, so the CPU schedule fine-tunes at 2e-4 (poly decay)."""
    return replace(recipe, patch=(64, 64, 64), patches_per_study=16, augmentations=1, epochs=4, batch_size=4,
                   elastic_prob=0.0, lr=max(recipe.lr, 2e-4))


def for_request(recipe: Recipe, request: dict, device_type: str) -> Recipe:
    """The recipe a fine-tuning request runs: the paper's schedule when asked (``schedule: paper``) or, with
    ``auto``, on a GPU; the CPU schedule otherwise; then the request's own overrides (epochs, lr...)."""
    schedule = request.get("schedule", "auto")
    paper = schedule == "paper" or (schedule == "auto" and device_type == "cuda")
    return (recipe if paper else for_cpu(recipe)).with_overrides(request)


def for_cpu_pretraining(recipe: Recipe) -> Recipe:
    """Long CPU pretraining: 48^3 patches (2.4x cheaper than 64^3, so more steps in the budget; batch norm makes the
    patch size independent of the whole-study window used at inference), 16 per study, no elastic deformation."""
    return replace(recipe, patch=(48, 48, 48), patches_per_study=16, augmentations=1, batch_size=4,
                   elastic_prob=0.0)


#: Fields of a recipe that describe the network: weights only load into a network built with the same ones.
ARCHITECTURE_FIELDS = ("inputs", "channels", "norm", "dropout", "with_followup")
#: Architecture fields added after weights were first published: a stored recipe without one was made with this.
LATER_ARCHITECTURE_DEFAULTS = {"with_followup": False}
#: Fields tuned on validation after training and stored with the weights (read back at inference).
POSTPROCESSING_FIELDS = ("threshold", "min_lesion_voxels", "mirror_axes")


def input_channels(recipe: Recipe) -> int:
    """Channels the network reads: one per input sequence, plus the subtraction of a longitudinal recipe that keeps
    the follow-up."""
    return len(recipe.inputs) + int(recipe.longitudinal and recipe.with_followup)


def postprocessing(recipe: Recipe) -> dict:
    """The tuned fields as stored with weights and shown in train stats (JSON types: lists, not tuples)."""
    return {k: list(v) if isinstance(v := getattr(recipe, k), tuple) else v for k in POSTPROCESSING_FIELDS}


def _typed(recipe: Recipe, field_name: str, value):
    """A stored (JSON) value as the type of the recipe's field (lists back to tuples of ints)."""
    current = getattr(recipe, field_name)
    return tuple(int(v) for v in value) if isinstance(current, tuple) else type(current)(value)


def from_checkpoint(recipe: Recipe, meta: dict) -> Recipe:
    """The code's recipe with what a checkpoint says of itself: its network (``meta["recipe"]``'s architecture
    fields, so older weights of another norm still load) and its tuned post-processing (``meta["postprocessing"]``).
    Weights that read other inputs belong to another task and are refused."""
    stored = meta.get("recipe") or {}
    if "inputs" in stored and tuple(stored["inputs"]) != tuple(recipe.inputs):
        raise ValueError(f"these weights read {tuple(stored['inputs'])}, but {recipe.task} reads {recipe.inputs}")
    own = {k: tuple(stored[k]) if isinstance(getattr(recipe, k), tuple) else type(getattr(recipe, k))(stored[k])
           for k in ARCHITECTURE_FIELDS if k in stored and k != "inputs"}
    if stored:
        own.update({k: v for k, v in LATER_ARCHITECTURE_DEFAULTS.items() if k not in stored})
    own.update({k: _typed(recipe, k, v) for k, v in (meta.get("postprocessing") or {}).items()
                if k in POSTPROCESSING_FIELDS})
    return replace(recipe, **own)


FLAIR_LESION = Recipe(task="flair_lesion", inputs=(FLAIR,), positive_values=(1, 2), output_value=1)

# Enhancing lesions on T1 post-contrast, with the pre-contrast T1 as a second channel so that T1-bright tissue
# that is not enhancement (fat, blood products) can be told apart, as the paper's two-channel input does.
ENHANCEMENT = Recipe(task="enhancement", inputs=(T1_POST, T1), positive_values=(1,), output_value=1)

# New lesions: the follow-up FLAIR and the follow-up minus the baseline FLAIR registered onto it (two channels); a
# saved label's value 2 marks them.
# Predicted new lesions under 14 voxels (a sphere 3 mm across at 1 mm, the usual size floor for a new T2 lesion) are
# dropped: they are mostly residual misregistration at edges (3 MS phantom follow-ups: 786 -> 43 predicted, PPV
# 0.005 -> 0.066, F1 0.01 -> 0.12; 6 new lesions detected either way).
NEW_LESION = Recipe(task="new_lesion", inputs=(FLAIR,), positive_values=(2,), output_value=2, longitudinal=True,
                    with_followup=True, min_lesion_voxels=14)

RECIPES = {r.task: r for r in (FLAIR_LESION, NEW_LESION, ENHANCEMENT)}
