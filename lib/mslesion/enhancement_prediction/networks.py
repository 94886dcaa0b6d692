"""The Narayana et al. (2020) networks: a VGG16 slice classifier and a small participant net on its scores.

The convolutional part is torchvision's VGG16 (configuration "D"), built by torchvision's own ``make_layers``
from a configuration whose channel counts are scaled by ``width``; width 1 is exactly ``vgg16().features`` and
loads ImageNet weights from a local torchvision file. The dense head and the participant net are new.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg

from .recipe import PredictionRecipe

#: Every participant-wise probability is clipped into [PROBABILITY_FLOOR, PROBABILITY_CEILING]: a model trained on a
#: few hundred studies has no grounds for certainty, and an exact 0 or 1 reads as a certainty (and ties studies).
PROBABILITY_FLOOR, PROBABILITY_CEILING = 0.005, 0.995


def calibrated_probability(logit: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """sigmoid(logit / temperature), clipped into [PROBABILITY_FLOOR, PROBABILITY_CEILING]."""
    return torch.sigmoid(logit / temperature).clamp(PROBABILITY_FLOOR, PROBABILITY_CEILING)


def vgg16_config(width: float) -> list[int | str]:
    """VGG16's layer configuration ("D") with every channel count scaled by ``width`` (at least 1)."""
    return [v if v == "M" else max(1, round(int(v) * width)) for v in vgg.cfgs["D"]]


def vgg16_features(width: float = 1.0, batch_norm: bool = False, in_channels: int = 3) -> nn.Sequential:
    """VGG16's convolutional base (13 convolutions in 5 blocks, each ending with a 2x2 max pool); ``in_channels``
    other than 3 (the optional FLAIR-change channel) replaces the first convolution."""
    features = vgg.make_layers(vgg16_config(width), batch_norm=batch_norm)
    if in_channels != 3:
        first = features[0]
        features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
    for module in features.modules():  # torchvision's VGG initialisation, which make_layers leaves to VGG
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return features


def block_starts(features: nn.Sequential) -> list[int]:
    """Index of the first layer of each of the five convolutional blocks."""
    starts, new_block = [], True
    for i, layer in enumerate(features):
        if new_block:
            starts.append(i)
            new_block = False
        if isinstance(layer, nn.MaxPool2d):
            new_block = True
    return starts


def load_imagenet_features(features: nn.Sequential, path: str | Path) -> None:
    """Copies torchvision ImageNet VGG16 weights (a local ``vgg16-*.pth``, never downloaded) into a width-1 base."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    own = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not own:
        raise ValueError(f"{path} holds no VGG16 'features.*' weights")
    if features[0].in_channels != 3:  # the FLAIR-change channel starts at zero weights: at first it sees nothing new
        from ..weights import transfer_state

        own = transfer_state(own, features.state_dict())
    features.load_state_dict(own)


class SliceClassifier(nn.Module):
    """VGG16 base + new dense head: one axial slice (3 channels: T1w, T2w, FLAIR; a 4th, the FLAIR change since the
    previous session, with ``recipe.previous_session``) -> enhancement logit."""

    def __init__(self, recipe: PredictionRecipe):
        super().__init__()
        self.features = vgg16_features(recipe.width, recipe.batch_norm, 4 if recipe.previous_session else 3)
        channels = vgg16_config(recipe.width)[-2]
        side = recipe.slice_size // 32  # five 2x2 max pools
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(int(channels) * side * side, recipe.head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(recipe.head_dropout),
            nn.Linear(recipe.head_hidden, 1),
        )

    def bottleneck(self, slices: torch.Tensor) -> torch.Tensor:
        return self.features(slices)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        """Logits (B,) of slices (B, 3, S, S); ``torch.sigmoid`` of them is the slice-wise score."""
        return self.head(self.features(slices))[:, 0]

    def last_block(self) -> nn.Sequential:
        return self.features[block_starts(self.features)[-1]:]


class ParticipantNet(nn.Module):
    """N slice scores (sorted, highest first) -> 4 hidden units -> participant-wise enhancement logit."""

    def __init__(self, recipe: PredictionRecipe):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(recipe.n_slices, recipe.participant_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(recipe.participant_dropout),
            nn.Linear(recipe.participant_hidden, 1),
        )

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        ordered = torch.sort(scores, dim=-1, descending=True).values
        return self.net(ordered)[..., 0]


class EnhancementPredictor(nn.Module):
    """Both nets, their Youden thresholds and the participant logit's calibration temperature (buffers, so one state
    dict holds all the model needs at serving). Weights saved before calibration existed load with temperature 1."""

    def __init__(self, recipe: PredictionRecipe):
        super().__init__()
        self.recipe = recipe
        self.slice_classifier = SliceClassifier(recipe)
        self.participant = ParticipantNet(recipe)
        self.register_buffer("slice_threshold", torch.tensor(0.5))
        self.register_buffer("participant_threshold", torch.tensor(0.5))
        self.register_buffer("temperature", torch.tensor(1.0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Weights without a stored calibration (the first shipped defaults) get temperature 1 (no scaling)."""
        if f"{prefix}slice_threshold" in state_dict and f"{prefix}temperature" not in state_dict:
            state_dict[f"{prefix}temperature"] = torch.tensor(1.0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def probability(self, scores: torch.Tensor) -> torch.Tensor:
        """Calibrated, clipped participant-wise probability of (..., N) slice scores."""
        return calibrated_probability(self.participant(scores), self.temperature)

    def slice_scores(self, slices: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Sigmoid scores (..., N) of stacks (..., N, 3, S, S), in batches to bound memory."""
        flat = slices.reshape(-1, *slices.shape[-3:])
        logits = torch.cat([self.slice_classifier(flat[i:i + batch]) for i in range(0, len(flat), batch)])
        return torch.sigmoid(logits).reshape(slices.shape[:-3])

    def forward(self, slices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Participant-wise probability (B,) (calibrated, clipped) and slice-wise scores (B, N) of stacks
        (B, N, 3, S, S), with the thresholds (B,) they are decided at."""
        scores = self.slice_scores(slices)
        batch = scores.shape[:1]
        return {
            "probability": self.probability(scores),
            "slice_scores": scores,
            "participant_threshold": self.participant_threshold.expand(batch),
            "slice_threshold": self.slice_threshold.expand(batch),
            "temperature": self.temperature.expand(batch),
        }
