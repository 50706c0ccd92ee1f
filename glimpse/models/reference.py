"""The RAM paper's reference rows: a fully connected network and a convolutional network on the whole image."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glimpse.data import unit
from glimpse.models.common import Episode


class FC(nn.Module):
    """Two hidden layers of 256 ReLU units on the flattened image, then a linear classifier."""

    stochastic = False

    def __init__(self, image_shape: tuple[int, int, int], classes: int = 10, hidden: int = 256):
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes)
        )

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> "FC":
        return cls(image_shape, classes, cfg.model.hidden)

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        return Episode(self.net(unit(images)))


class CNN(nn.Module):
    """Two 5x5 convolutions (each ReLU and 2x2 max-pooling), then a linear classifier on the feature map."""

    stochastic = False

    def __init__(self, image_shape: tuple[int, int, int], classes: int = 10, channels: tuple[int, int] = (16, 32)):
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(channels[1] * (h // 4) * (w // 4), classes)

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> "CNN":
        return cls(image_shape, classes, tuple(cfg.model.channels))

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        return Episode(self.classifier(self.features(unit(images)).flatten(1)))
