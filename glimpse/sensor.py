"""The retina: rho(x, l), a few multi-resolution square patches centred on l.

Coordinates (docs/design.md): a location is (x, y) in [-1, 1]^2, (-1, -1) the
top-left corner of the image, (1, 1) the bottom-right. In pixel units the
centre is u = (x + 1) * W / 2, v = (y + 1) * H / 2 (pixel j covers [j, j + 1)),
and a patch of side s covers the s pixels starting at floor(u - s/2 + 1/2).

Patch i has side round(patch * scale_factor**i) and is resized to patch x patch:
by area (`resize="area"`, the exact mean of each block; the work per glimpse is
proportional to the pixels inside its patches) or bilinearly (`resize="bilinear"`,
4 pixels per output pixel; the work is proportional to scales * patch^2).
Pixels outside the image read as zero. Neither ever depends on the image size.

Images are uint8 (read as value / 255, as the data layer serves them) or float.
On the CPU, `glimpse.kernels.read` makes the snapped patches from their integer
origins straight out of the images; elsewhere, and for unsnapped (differentiable)
patches, one grid_sample does (uint8 images are made float first). Both give the
same patches (tests hold them to each other and to a per-sample reference).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from glimpse import kernels
from glimpse.data import unit


def patch_sides(patch: int, scales: int, scale_factor: float) -> list[int]:
    """Side in image pixels of each of the retina's patches, finest first."""
    return list(_sides(patch, scales, scale_factor))


@functools.lru_cache(maxsize=64)
def _sides(patch: int, scales: int, scale_factor: float) -> tuple[int, ...]:
    return tuple(int(round(patch * scale_factor**i)) for i in range(scales))


def _shift(half: Tensor, side: int) -> Tensor:
    """The window's origin is floor(l * half + shift) in pixels: (l + 1) * half - side / 2, plus 0.5 to round."""
    return half - (side / 2 - 0.5)


def patch_origins(locations: Tensor, side: int, height: int, width: int) -> Tensor:
    """Top-left pixel (column, row) of the side x side patches centred on `locations` (B, 2), as int64 (B, 2).

    The very expression `read` uses, so that pictures and pixel counts agree with the sensor to the last bit.
    """
    half = locations.new_tensor([width / 2, height / 2])
    return torch.addcmul(_shift(half, side), locations, half).floor_().long()


@functools.lru_cache(maxsize=64)
def _lattice(counts: tuple[int, ...], sides: tuple[int, ...], height: int, width: int, device: torch.device,
             dtype: torch.dtype) -> tuple[Tensor, ...]:
    """Constants of `read`, made once per shape.

    Scale i is read at counts[i] x counts[i] points spaced sides[i] / counts[i]
    apart, the first half a spacing in from its window's origin (a pixel's
    centre when counts[i] == sides[i]). In grid_sample's [-1, 1] units a point
    is origin / half + (offset / half - 1): one matrix product for all of them,
    grid = base + origin @ spread, where `spread` copies each scale's origin x
    and y, divided by half, to the x and y of every point of that scale.
    """
    half = torch.tensor([width / 2, height / 2], device=device, dtype=dtype)
    shift = torch.stack([_shift(half, side) for side in sides])  # (S, 2)
    total = sum(n * n for n in counts)
    spread = torch.zeros(len(sides), 2, total, 2, device=device, dtype=dtype)
    bases, first = [], 0
    for i, (n, side) in enumerate(zip(counts, sides)):
        steps = (torch.arange(n, device=device, dtype=dtype) + 0.5) * (side / n)
        # (n * n, 2) as (x, y)
        offsets = torch.stack(torch.broadcast_tensors(steps[None, :], steps[:, None]), -1).reshape(-1, 2)
        bases.append(offsets / half - 1)
        for xy in range(2):
            spread[i, xy, first : first + n * n, xy] = 1 / half[xy]
        first += n * n
    return half, shift, torch.cat(bases).reshape(1, -1), spread.view(2 * len(sides), -1)


def read(images: Tensor, locations: Tensor, counts: tuple[int, ...], sides: tuple[int, ...], mode: str,
         snap: bool = True) -> Tensor:
    """`images` (B, C, H, W) at counts[i]^2 points of each scale's window, for `locations` (B, N, 2):
    (B, C, N, sum counts^2).

    One grid_sample for every scale and location, zero outside the image (uint8 images are made float first,
    the whole image: the CPU's `kernels.read` does not need that). mode="nearest" at
    counts == sides reads each window's pixels exactly; mode="bilinear" at counts == patch
    resizes. The cost is proportional to the points read, never to H and W.
    """
    images = unit(images)
    b, c, h, w = images.shape
    n = locations.shape[1]
    half, shift, base, spread = _lattice(counts, sides, h, w, images.device, images.dtype)
    origin = torch.addcmul(shift, locations.unsqueeze(2), half)  # (B, N, S, 2), in pixels
    # shift holds +0.5 so that floor rounds to the nearest pixel; unsnapped, the window is centred exactly
    origin = origin.floor_() if snap else origin - 0.5
    grid = torch.addmm(base, origin.reshape(b * n, -1), spread)  # (B * N, points * 2)
    out = F.grid_sample(images, grid.view(b, 1, -1, 2), mode=mode, padding_mode="zeros", align_corners=False)
    return out.view(b, c, n, -1)


@functools.lru_cache(maxsize=64)
def _taps(counts: tuple[int, ...], sides: tuple[int, ...], mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For `kernels.read`: which pixels, weighted how, make each point of a patch.

    Along either axis, point k of n in a window of `side` pixels is made of pixels (offsets from the window's
    origin) with weights, (S, n, m): mode="bilinear", the two
    neighbours floor(t) and floor(t) + 1 of t = (k + 1/2) side / n - 1/2 (F.interpolate's align_corners=False), by
    nearness; mode="area", the pixels floor(k side / n) .. ceil((k + 1) side / n) - 1 equally (adaptive_avg_pool2d's
    blocks). single (S,): the scales whose points are each one whole pixel (side == n).
    """
    rows = []
    for n, side in zip(counts, sides):
        scale = []
        for k in range(n):
            if mode == "bilinear":
                t = (k + 0.5) * side / n - 0.5
                lo = math.floor(t)
                scale.append([(lo, 1 - (t - lo)), (lo + 1, t - lo)])
            else:
                first, end = (k * side) // n, -((-(k + 1) * side) // n)
                scale.append([(p, 1 / (end - first)) for p in range(first, end)])
        rows.append(scale)
    m = max(len(point) for scale in rows for point in scale)
    padded = [[point + [(0, 0.0)] * (m - len(point)) for point in scale] for scale in rows]  # weight 0: never read
    taps = np.array([[[p for p, _ in point] for point in scale] for scale in padded], np.int64)
    weights = np.array([[[wt for _, wt in point] for point in scale] for scale in padded], np.float32)
    single = (weights[:, :, 1:] == 0).all((1, 2)) if m > 1 else np.ones(len(sides), bool)
    return taps, weights, single


def read_cpu(images: Tensor, locations: Tensor, counts: tuple[int, ...], sides: tuple[int, ...], mode: str,
             out: Tensor | None = None) -> Tensor:
    """Snapped patches through `kernels.read` (CPU): (B, S, C, n, n) for `locations` (B, 2), (B, N, S, C, n, n)
    for (B, N, 2).

    mode="bilinear" resizes as `sample` does, "area" as `area` does (and at counts == sides reads the pixels, as
    `crop`). The kernel places each patch as `read` does, floor(shift + l * half) rounded once, to the last bit.
    `out`, if given, is written (the result's shape, any strides) and returned.
    """
    locs, many = _with_n(locations)
    half, shift = _lattice(counts, sides, *images.shape[-2:], locs.device, locs.dtype)[:2]
    if out is not None:  # the kernel writes (B, N, ...): a (B, ...) buffer gets its N = 1 axis as a view
        kernels.read(images, locs, half, shift, *_taps(counts, sides, mode), out=out if many else out.unsqueeze(1))
        return out
    patches = kernels.read(images, locs, half, shift, *_taps(counts, sides, mode))
    return patches if many else patches.select(1, 0)


def _kernel_reads(images: Tensor) -> bool:
    """Whether `kernels.read` takes these images: on the CPU, in a dtype it reads (float64, say, keeps
    grid_sample's)."""
    return images.device.type == "cpu" and images.dtype in kernels.DIVISORS


def _with_n(locations: Tensor) -> tuple[Tensor, bool]:
    """`locations` as (B, N, 2) for `read`, and whether they came so ((B, 2) is one location per image)."""
    many = locations.dim() == 3
    return (locations if many else locations.unsqueeze(1)), many


def _patches(points: Tensor, side: int, scales: int, many: bool) -> Tensor:
    """`read`'s (B, C, N, scales * side^2) as (B, N, scales, C, side, side); without N, (B, scales, C, side, side)."""
    b, c, n = points.shape[:3]
    out = points.view(b, c, n, scales, side, side).permute(0, 2, 3, 1, 4, 5)
    return out if many else out.select(1, 0)


def crop(images: Tensor, locations: Tensor, side: int) -> Tensor:
    """The side x side windows of `images` (B, C, H, W) centred on `locations` (B, 2) or (B, N, 2), zero outside.

    Returns (B, C, side, side), or (B, N, C, side, side) for N locations per image.
    Nearest-neighbour reads at the pixels' centres: each value is a pixel, exactly.
    """
    if _kernel_reads(images):
        return read_cpu(images, locations, (side,), (side,), "area").select(-4, 0)
    locs, many = _with_n(locations)
    return _patches(read(images, locs, (side,), (side,), "nearest"), side, 1, many).select(-4, 0)


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
    locs, many = _with_n(locations)
    return _patches(read(images, locs, (patch,) * len(sides), sides, "bilinear", snap), patch, len(sides), many)


def area(images: Tensor, locations: Tensor, patch: int, sides: tuple[int, ...]) -> Tensor:
    """Every side x side window read whole (one grid_sample) and area-resized to patch x patch; shapes as `sample`.

    For an integer ratio side / patch each output pixel is exactly the mean of its block.
    """
    locs, many = _with_n(locations)
    pixels = read(images, locs, sides, sides, "nearest")  # (B, C, N, sum side^2)
    if sides == (patch,):  # one scale at full resolution: the pixels are the patch
        return _patches(pixels, patch, 1, many)
    parts, first = [], 0
    for side in sides:
        window = pixels[..., first : first + side * side]
        first += side * side
        parts.append(window if side == patch
                     else F.adaptive_avg_pool2d(window.reshape(-1, side, side), patch).view(*window.shape[:3], -1))
    return _patches(torch.cat(parts, -1) if len(parts) > 1 else parts[0], patch, len(sides), many)


RESIZES = ("area", "bilinear")


def retina(
    images: Tensor, locations: Tensor, patch: int, scales: int = 1, scale_factor: float = 2.0, resize: str = "area",
    snap: bool = True, out: Tensor | None = None,
) -> Tensor:
    """rho(x, l): patches (B, scales, C, patch, patch) of `images` (B, C, H, W) at `locations` (B, 2).

    `locations` (B, N, 2) reads N glimpses of each image at once: (B, N, scales, C, patch, patch).
    `out`, if given, receives the patches (the CPU kernel writes them there: no temporary) and is returned.

    resize="area": each side x side window is read whole and area-averaged (exact; cost ~ sum of side^2).
    resize="bilinear": see `sample` (cost ~ scales * patch^2, aliased beyond a ratio of 2); with
    snap=False the patches are not rounded to whole pixels and are differentiable in the location.
    """
    sides = _sides(patch, scales, scale_factor)
    if not snap and resize != "bilinear":
        raise ValueError("snap=False needs resize='bilinear': area windows are whole pixels")
    if snap and _kernel_reads(images):
        return read_cpu(images, locations, (patch,) * len(sides), sides, resize, out)
    patches = (sample(images, locations, patch, sides, snap) if resize == "bilinear"
               else area(images, locations, patch, sides))
    return patches if out is None else out.copy_(patches)


class Sensor(torch.nn.Module):
    """The glimpse sensor shared by every model that looks through glimpses and by the environments."""

    def __init__(self, patch: int = 8, scales: int = 1, scale_factor: float = 2.0, resize: str = "area",
                 snap: bool = True):
        super().__init__()
        self.patch, self.scales, self.scale_factor, self.resize, self.snap = patch, scales, scale_factor, resize, snap

    @property
    def sides(self) -> list[int]:
        return patch_sides(self.patch, self.scales, self.scale_factor)

    def readable(self, images: Tensor) -> Tensor:
        """`images` as this sensor reads them, made once a batch: as they are where `kernels.read` takes them
        (snapped, on the CPU: uint8 stays bytes), else floats in [0, 1] for grid_sample, not made at every glimpse."""
        return images if self.snap and _kernel_reads(images) else unit(images)

    def forward(self, images: Tensor, locations: Tensor, out: Tensor | None = None) -> Tensor:
        return retina(images, locations, self.patch, self.scales, self.scale_factor, self.resize, self.snap, out)

    def extra_repr(self) -> str:
        return (f"patch={self.patch}, scales={self.scales}, scale_factor={self.scale_factor}, resize={self.resize}, "
                f"snap={self.snap}")
