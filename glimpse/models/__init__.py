"""Model families, chosen with `model=`: one file each."""

from __future__ import annotations

from torch import nn

from glimpse.errors import ConfigError
from glimpse.models.common import Episode

MODELS = ("ram",)


def build_model(cfg, image_shape: tuple[int, int, int], classes: int) -> nn.Module:
    """The model named by `cfg.model.name`, sized for images of `image_shape` (C, H, W)."""
    name = cfg.model.name
    if name == "ram":
        from glimpse.models.ram import RAM

        return RAM.from_config(cfg, image_shape, classes)
    raise ConfigError("model", name, ", ".join(MODELS))


__all__ = ["Episode", "build_model", "MODELS"]
