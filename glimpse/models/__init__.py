"""Model families, chosen with `model=`: one file each.

Every model maps `forward(images, greedy=False, generator=None)` to an Episode and
says whether its policy is stochastic (only then does evaluation average M runs).
"""

from __future__ import annotations

from torch import nn

from glimpse.errors import ConfigError
from glimpse.models.common import Episode

MODELS = ("ram", "soft", "dram", "draw", "fc", "cnn")


def build_model(cfg, image_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The model named by `cfg.model.name`, sized for images of `image_shape` (C, H, W)."""
    name = cfg.model.name
    if name == "ram":
        from glimpse.models.ram import RAM as cls
    elif name == "soft":
        from glimpse.models.soft import SoftAttention as cls
    elif name == "dram":
        from glimpse.models.dram import DRAM as cls
    elif name == "draw":
        from glimpse.models.draw import DRAW as cls
    elif name == "fc":
        from glimpse.models.reference import FC as cls
    elif name == "cnn":
        from glimpse.models.reference import CNN as cls
    else:
        raise ConfigError("model", name, ", ".join(MODELS))
    return cls.from_config(cfg, image_shape, classes)


__all__ = ["Episode", "build_model", "MODELS"]
