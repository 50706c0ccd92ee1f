"""CPU kernels (numba) for the two per-batch hot paths: the retina's reads and the canvas variants.

Both have a torch twin that serves every other device and is the reference the
tests hold these to: `glimpse.sensor.sample` / `area` / `crop` (grid_sample)
and `glimpse.data.canvas_torch`. On the CPU these kernels replace them because
on a 100x100 canvas the step's time in data and sensor was memory, not
arithmetic: grid_sample needs float images and a materialised sampling grid,
so each glimpse re-read a 5 MB float canvas batch from outside the cache. Here
the canvases stay uint8 (a quarter of the bytes), the taps are computed from
each patch's integer origin, and a whole canvas is drawn in one pass while it
is in cache (README, "Performance", has the measurements).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange
from torch import Tensor


def _threads() -> None:
    """Use as many threads as torch does (1 under a one-thread sweep), never more than numba has."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _read(images, origins, taps, weights, divisor, out):  # pragma: no cover - compiled
    """out[i, j, s, c, ky, kx] = sum_a,b wy[ky, a] wx[kx, b] images[i, c, oy + taps[s, ky, a], ox + taps[s, kx, b]] / divisor.

    images (B, C, H, W) uint8 or float32; origins (B, N, S, 2) int64 as (x, y);
    taps and weights (S, n, m): the m pixels, as offsets from the origin, that
    make output pixel k along either axis and their weights. A tap outside the
    image weighs zero (grid_sample's zero padding).
    """
    b, c, h, w = images.shape
    nl, ns = origins.shape[1], origins.shape[2]
    n, m = taps.shape[1], taps.shape[2]
    for job in prange(b * nl):
        i, j = job // nl, job % nl
        ry = np.empty((n, m), np.int64)
        rx = np.empty((n, m), np.int64)
        wy = np.empty((n, m), np.float32)
        wx = np.empty((n, m), np.float32)
        for s in range(ns):
            ox, oy = origins[i, j, s, 0], origins[i, j, s, 1]
            for k in range(n):
                for a in range(m):
                    wt = weights[s, k, a]
                    r, q = oy + taps[s, k, a], ox + taps[s, k, a]
                    inside = 0 <= r < h
                    ry[k, a], wy[k, a] = (r, wt) if inside else (0, np.float32(0))
                    inside = 0 <= q < w
                    rx[k, a], wx[k, a] = (q, wt) if inside else (0, np.float32(0))
            for ch in range(c):
                img, o = images[i, ch], out[i, j, s, ch]
                for ky in range(n):
                    for kx in range(n):
                        acc = np.float32(0)
                        for a in range(m):
                            if wy[ky, a] == 0:  # a row outside, or bilinear's second tap on a whole pixel
                                continue
                            row = np.float32(0)
                            for t in range(m):
                                row += wx[kx, t] * np.float32(img[ry[ky, a], rx[kx, t]])
                            acc += wy[ky, a] * row
                        o[ky, kx] = acc / divisor


def read(images: Tensor, origins: Tensor, taps: Tensor, weights: Tensor) -> Tensor:
    """The retina's patches (B, N, S, C, n, n), float32, from CPU `images` (B, C, H, W) uint8 (as /255) or float32.

    `origins` (B, N, S, 2) int64 are the patches' top-left pixels (x, y); `taps`, `weights` (S, n, m) as `_read`.
    """
    b, c = images.shape[:2]
    nl, ns = origins.shape[1:3]
    n = taps.shape[1]
    out = torch.empty(b, nl, ns, c, n, n)
    if images.dtype not in (torch.uint8, torch.float32):
        raise TypeError(f"the CPU retina reads uint8 or float32 images, not {images.dtype}")
    divisor = np.float32(255 if images.dtype == torch.uint8 else 1)
    _threads()
    _read(images.contiguous().numpy(), origins.contiguous().numpy(), taps.numpy(), weights.numpy(), divisor, out.numpy())
    return out


@njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _paste(images, top, left, pool, other, cy, cx, py, px, d, out):  # pragma: no cover - compiled
    """out[i] = images[i] at (top, left) plus pool[other[i, k]]'s d x d piece at (cy, cx) put at (py, px), capped at 255."""
    b, c, h, w = images.shape
    for i in prange(b):
        for ch in range(c):
            o = out[i, ch]
            o[:, :] = 0
            o[top[i] : top[i] + h, left[i] : left[i] + w] = images[i, ch]
            for k in range(other.shape[1]):
                src = pool[other[i, k], ch]
                for y in range(d):
                    for x in range(d):
                        v = np.int32(o[py[i, k] + y, px[i, k] + x]) + np.int32(src[cy[i, k] + y, cx[i, k] + x])
                        o[py[i, k] + y, px[i, k] + x] = min(v, 255)


def paste(images: Tensor, size: int, top: Tensor, left: Tensor, pool: Tensor, other: Tensor, cy: Tensor, cx: Tensor,
          py: Tensor, px: Tensor, d: int) -> Tensor:
    """uint8 canvases (B, C, size, size): `images` at (top, left), plus the clutter pieces (B, K), summed and capped at 255.

    Adding one piece at a time and capping each sum equals capping the whole sum (every term is >= 0).
    """
    b, c = images.shape[:2]
    out = torch.empty(b, c, size, size, dtype=torch.uint8)
    _threads()
    arrays = (t.contiguous().numpy() for t in (images, top, left, pool, other, cy, cx, py, px))
    _paste(*arrays, d, out.numpy())
    return out
