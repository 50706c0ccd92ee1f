"""The retina: rho(x, l), a few multi-resolution square patches centred on l.

Coordinates (DESIGN.md): a location is (x, y) in [-1, 1]^2, (-1, -1) the
top-left corner of the image, (1, 1) the bottom-right. In pixel units the
centre is u = (x + 1) * W / 2, v = (y + 1) * H / 2 (pixel j covers [j, j + 1)),
and a patch of side s covers the s pixels starting at floor(u - s/2 + 1/2).

Patch i has side round(patch * scale_factor**i) and is resized to patch x patch:
by area (`resize="area"`, the exact mean of each block; the work per glimpse is
proportional to the pixels inside its patches) or bilinearly (`resize="bilinear"`,
4 pixels per output pixel; the work is proportional to scales * patch^2).
Pixels outside the image read as zero. Neither ever depends on the image size.
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
    """The side x side windows of `images` (B, C, H, W) centred on `locations` (B, 2) or (B, N, 2), zero outside.

    Returns (B, C, side, side), or (B, N, C, side, side) for N locations per image.
    """
    b, c, h, w = images.shape
    many = locations.dim() == 3
    locs = locations if many else locations[:, None]
    n = locs.shape[1]
    half, shift, offsets, first, last, stride = _grid(side, h, w, images.device)
    origin = torch.addcmul(shift, locs, half).floor_().long()
    coords = origin[..., None] + offsets  # (B, N, 2, side): the columns and the rows each window covers
    clamped = torch.clamp(coords, first, last)
    inside = clamped == coords
    inside = inside[:, :, 1, :, None] & inside[:, :, 0, None, :]  # (B, N, side, side)
    # One flat gather of exactly the pixels asked for: cost ~ side^2, whatever H and W are.
    index = torch.addcmul(clamped[:, :, 0, None, :], clamped[:, :, 1, :, None], stride).reshape(b, 1, n * side * side)
    pixels = images.reshape(b, c, h * w).gather(2, index.expand(b, c, -1)).view(b, c, n, side, side)
    if many:
        return pixels.transpose(1, 2) * inside[:, :, None]
    return pixels.view(b, c, side, side) * inside.view(b, 1, side, side)


@functools.lru_cache(maxsize=64)
def _lattice(patch: int, sides: tuple[int, ...], height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Constants of `sample`, made once per shape.

    The sample grid, in grid_sample's [-1, 1] units, is origin / half + (offsets / half - 1)
    for each scale's patch origin (in pixels). Written as one matrix product:
    grid = base + origin @ spread, where `spread` copies each origin's x and y,
    divided by half, to the x and y of every sample point of its scale.
    """
    half = torch.tensor([width / 2, height / 2], device=device, dtype=dtype)
    shift = torch.stack([half - (side / 2 - 0.5) for side in sides])  # (S, 2): origin = floor(l * half + shift)
    steps = torch.stack([(torch.arange(patch, device=device, dtype=dtype) + 0.5) * (side / patch) for side in sides])  # (S, p)
    offsets = torch.stack(torch.broadcast_tensors(steps[:, None, :], steps[:, :, None]), -1)  # (S, p, p, 2) as (x, y)
    base = (offsets / half - 1).reshape(1, -1)
    n = len(sides)
    spread = torch.zeros(n, 2, n, patch * patch, 2, device=device, dtype=dtype)
    for i in range(n):
        for xy in range(2):
            spread[i, xy, i, :, xy] = 1 / half[xy]
    return half, shift, base, spread.view(2 * n, -1)


def sample(images: Tensor, locations: Tensor, patch: int, sides: tuple[int, ...], snap: bool = True) -> Tensor:
    """Every patch resized bilinearly (no antialiasing), one grid_sample for all scales and locations.

    `locations` (B, 2) gives (B, S, C, patch, patch); (B, N, 2) gives (B, N, S, C, patch, patch).
    Equal to cropping each side x side window exactly and resizing it with
    F.interpolate(mode="bilinear", align_corners=False): a sample point reads the
    4 pixels around it, so a glimpse costs the same whatever the patch sides. Exact
    for sides patch and 2 * patch; for larger ratios each output pixel is the mean
    of the 2 x 2 pixels at the centre of its block, not of the whole block.
    With snap=False the patch origin is not rounded to a whole pixel, so the
    output is differentiable with respect to the location (differentiable glimpses).
    """
    b, c, h, w = images.shape
    many = locations.dim() == 3
    locs = locations if many else locations[:, None]
    n, scales = locs.shape[1], len(sides)
    half, shift, base, spread = _lattice(patch, sides, h, w, images.device, images.dtype)
    origin = torch.addcmul(shift, locs[:, :, None, :], half)  # (B, N, S, 2), in pixels
    # shift holds +0.5 so that floor rounds to the nearest pixel; unsnapped, the window is centred exactly
    origin = origin.floor_() if snap else origin - 0.5
    grid = torch.addmm(base, origin.reshape(b * n, -1), spread)  # (B * N, S * p * p * 2)
    out = F.grid_sample(images, grid.view(b, 1, -1, 2), mode="bilinear", padding_mode="zeros", align_corners=False)
    out = out.view(b, c, n, scales, patch, patch).permute(0, 2, 3, 1, 4, 5)
    return out if many else out[:, 0]


RESIZES = ("area", "bilinear")


def retina(
    images: Tensor, locations: Tensor, patch: int, scales: int = 1, scale_factor: float = 2.0, resize: str = "area",
    snap: bool = True,
) -> Tensor:
    """rho(x, l): patches (B, scales, C, patch, patch) of `images` (B, C, H, W) at `locations` (B, 2).

    `locations` (B, N, 2) reads N glimpses of each image at once: (B, N, scales, C, patch, patch).

    resize="area": each side x side window is gathered whole and area-averaged (exact; cost ~ sum of side^2).
    resize="bilinear": see `sample` (cost ~ scales * patch^2, aliased beyond a ratio of 2); with
    snap=False the patches are not rounded to whole pixels and are differentiable in the location.
    """
    sides = patch_sides(patch, scales, scale_factor)
    if resize == "bilinear":
        return sample(images, locations, patch, tuple(sides), snap)
    if not snap:
        raise ValueError("snap=False needs resize='bilinear': area windows are whole pixels")
    out = []
    for side in sides:
        window = crop(images, locations, side)
        if side != patch:
            # Area resize; for an integer ratio this is exactly the mean of each side/patch block.
            window = F.adaptive_avg_pool2d(window.flatten(0, -4), patch).view(*window.shape[:-2], patch, patch)
        out.append(window)
    return torch.stack(out, -4)


class Sensor(torch.nn.Module):
    """The glimpse sensor shared by every model that looks through glimpses and by the environments."""

    def __init__(self, patch: int = 8, scales: int = 1, scale_factor: float = 2.0, resize: str = "area", snap: bool = True):
        super().__init__()
        self.patch, self.scales, self.scale_factor, self.resize, self.snap = patch, scales, scale_factor, resize, snap

    @property
    def sides(self) -> list[int]:
        return patch_sides(self.patch, self.scales, self.scale_factor)

    def forward(self, images: Tensor, locations: Tensor) -> Tensor:
        return retina(images, locations, self.patch, self.scales, self.scale_factor, self.resize, self.snap)

    def extra_repr(self) -> str:
        return f"patch={self.patch}, scales={self.scales}, scale_factor={self.scale_factor}, resize={self.resize}, snap={self.snap}"
