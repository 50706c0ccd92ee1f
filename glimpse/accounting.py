"""Fair accounting of what a model costs: parameters, MACs per image, distinct pixels read."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from glimpse.sensor import patch_origins


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _addmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the in-place addmm_ (RNNEpisode adds its products into buffers), which FlopCounterMode leaves out."""
    (m, k), (_, n) = a_shape, b_shape
    return 2 * m * k * n


@torch.no_grad()
def macs_per_image(model: nn.Module, images: Tensor) -> float:
    """Multiply-accumulates of one inference forward (greedy policy), measured by FlopCounterMode."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_flops}) as counter:
        model(images, greedy=True)
    model.train(was_training)
    return counter.get_total_flops() / 2 / images.shape[0]


def pixels_read(locations: Tensor | None, sides: list[int], height: int, width: int) -> Tensor:
    """Distinct image pixels (spatial positions, all channels) inside any patch of any glimpse, per image.

    `locations` (B, T, 2); a model that looks at the whole image (no locations) reads height * width.
    """
    if locations is None:
        return torch.full((1,), float(height * width))
    b, t, _ = locations.shape
    seen = torch.zeros(b, height, width, dtype=torch.bool, device=locations.device)
    rows = torch.arange(height, device=locations.device)
    cols = torch.arange(width, device=locations.device)
    for step in range(t):
        for side in sides:
            left, top = patch_origins(locations[:, step], side, height, width).unbind(1)
            in_rows = (rows >= top[:, None]) & (rows < top[:, None] + side)
            in_cols = (cols >= left[:, None]) & (cols < left[:, None] + side)
            seen |= in_rows[:, :, None] & in_cols[:, None, :]
    return seen.flatten(1).sum(1).float()
