"""The retina: rho(x, l), a few multi-resolution square patches centred on l.

Coordinates (DESIGN.md): a location is (x, y) in [-1, 1]^2, (-1, -1) the
top-left corner of the image, (1, 1) the bottom-right. In pixel units the
centre is u = (x + 1) * W / 2, v = (y + 1) * H / 2 (pixel j covers [j, j + 1)),
and a patch of side s covers the s pixels starting at floor(u - s/2 + 1/2).

Patch i has side round(patch * scale_factor**i) and is area-averaged down to
patch x patch. Pixels outside the image read as zero. The work per glimpse is
proportional to the pixels inside its patches and never to the image size.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


def patch_sides(patch: int, scales: int, scale_factor: float) -> list[int]:
    """Side in image pixels of each of the retina's patches, finest first."""
    return [int(round(patch * scale_factor**i)) for i in range(scales)]


def patch_origins(locations: Tensor, side: int, height: int, width: int) -> Tensor:
    """Top-left pixel (column, row) of the side x side patches centred on `locations` (B, 2), as int64 (B, 2)."""
    half = locations.new_tensor([width / 2, height / 2])
    return torch.floor((locations + 1) * half - (side / 2 - 0.5)).long()


@functools.lru_cache(maxsize=64)
def _grid(side: int, height: int, width: int, device: torch.device) -> tuple[Tensor, ...]:
    """Constants of `crop`, made once per shape: a few tensor ops fewer on every glimpse."""
    half = torch.tensor([width / 2, height / 2], device=device)
    shift = half - (side / 2 - 0.5)  # origin = floor(l * half + shift)
    offsets = torch.arange(side, device=device)
    last = torch.tensor([width - 1, height - 1], device=device)[:, None]
    return half, shift, offsets, torch.zeros_like(last), last, torch.tensor(width, device=device)


def crop(images: Tensor, locations: Tensor, side: int) -> Tensor:
    """The side x side window of `images` (B, C, H, W) centred on `locations` (B, 2), zero outside."""
    b, c, h, w = images.shape
    half, shift, offsets, first, last, stride = _grid(side, h, w, images.device)
    origin = torch.addcmul(shift, locations, half).floor_().long()
    coords = origin[:, :, None] + offsets  # (B, 2, side): the columns and the rows the window covers
    clamped = torch.clamp(coords, first, last)
    inside = clamped == coords
    inside = inside[:, 1, :, None] & inside[:, 0, None, :]
    # One flat gather of exactly the pixels asked for: cost ~ side^2, whatever H and W are.
    index = torch.addcmul(clamped[:, 0, None, :], clamped[:, 1, :, None], stride).view(b, 1, side * side)
    pixels = images.reshape(b, c, h * w).gather(2, index.expand(b, c, -1)).view(b, c, side, side)
    return pixels * inside[:, None]


def retina(images: Tensor, locations: Tensor, patch: int, scales: int = 1, scale_factor: float = 2.0) -> Tensor:
    """rho(x, l): patches (B, scales, C, patch, patch) of `images` (B, C, H, W) at `locations` (B, 2)."""
    out = []
    for side in patch_sides(patch, scales, scale_factor):
        window = crop(images, locations, side)
        if side != patch:
            # Area resize; for an integer ratio this is exactly the mean of each side/patch block.
            window = F.adaptive_avg_pool2d(window, patch)
        out.append(window)
    return torch.stack(out, 1)


class Sensor(torch.nn.Module):
    """The glimpse sensor shared by every model that looks through glimpses and by the environments."""

    def __init__(self, patch: int = 8, scales: int = 1, scale_factor: float = 2.0):
        super().__init__()
        self.patch, self.scales, self.scale_factor = patch, scales, scale_factor

    @property
    def sides(self) -> list[int]:
        return patch_sides(self.patch, self.scales, self.scale_factor)

    def forward(self, images: Tensor, locations: Tensor) -> Tensor:
        return retina(images, locations, self.patch, self.scales, self.scale_factor)

    def extra_repr(self) -> str:
        return f"patch={self.patch}, scales={self.scales}, scale_factor={self.scale_factor}"
