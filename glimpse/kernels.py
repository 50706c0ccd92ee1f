"""CPU kernels (numba) for the two per-batch hot paths: the retina's reads and the canvas variants.

Both have a torch twin that serves every other device and is the reference the
tests hold these to: `glimpse.sensor.sample` / `area` / `crop` (grid_sample)
and `glimpse.data.canvas_torch`. On the CPU these kernels replace them because
on a 100x100 canvas the step's time in data and sensor was memory, not
arithmetic: grid_sample needs float images and a materialised sampling grid,
so each glimpse re-read the whole float canvas batch from outside the cache. Here
the canvases stay uint8 (a quarter of the bytes), each patch's integer origin
is computed from its location in the kernel and its taps from that origin, the
patches are written where the caller wants them (RAM: its per-step rows), and a
whole canvas is drawn in one pass while it is in cache (the measurements: experiments/results/bench/README.md).
"""

from __future__ import annotations

import os

import torch

# numba sizes its thread pool once, at import, from NUMBA_NUM_THREADS (default: every core); set_num_threads
# only narrows later regions. A run given one thread (OMP_NUM_THREADS=1, as when two runs share two cores) must
# not start a pool of every core's width: its idle workers spin in the OpenMP runtime torch shares, and a
# training run beside another slowed several-fold.
os.environ.setdefault("NUMBA_NUM_THREADS", str(torch.get_num_threads()))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange, types  # noqa: E402
from numba.extending import intrinsic
from torch import Tensor


def _threads() -> None:
    """Use as many threads as torch does (1 under a one-thread sweep), never more than numba has."""
    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != wanted:
        numba.set_num_threads(wanted)


@intrinsic
def _fma(typingctx, a, b, c):  # pragma: no cover - compiled
    """a * b + c rounded once (LLVM's llvm.fma), as torch's addcmul computes the grid_sample path's origins on
    the CPU."""
    if not (a == b == c and isinstance(a, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        return builder.call(builder.module.declare_intrinsic("llvm.fma", [args[0].type] * 3), args)

    return a(a, b, c), codegen


@njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _read(images, locations, half, shift, taps, weights, single, divisor, out):  # pragma: no cover - compiled
    """out[i, j, s, c, ky, kx] = sum_a,b wy[ky, a] wx[kx, b] images[i, c, oy + taps[s, ky, a], ox + taps[s, kx, b]]
    / divisor.

    images (B, C, H, W) uint8 or float32; locations (B, N, 2) as (x, y); patch s's top-left pixel is
    (ox, oy) = floor(shift[s] + locations[i, j] * half), rounded once as `glimpse.sensor.read`'s addcmul rounds it;
    taps and weights (S, n, m): the m pixels, as offsets from the origin, that make output pixel k along
    either axis, and their weights; single[s]: scale s reads one pixel per output pixel. A tap outside the
    image weighs zero (grid_sample's zero padding). `out` may be a strided view (a row of a larger buffer).
    """
    b, c, h, w = images.shape
    nl, ns = locations.shape[1], shift.shape[0]
    n, m = taps.shape[1], taps.shape[2]
    for job in prange(b * nl):
        i, j = job // nl, job % nl
        ry = np.empty((n, m), np.int64)
        rx = np.empty((n, m), np.int64)
        wy = np.empty((n, m), np.float32)
        wx = np.empty((n, m), np.float32)
        for s in range(ns):
            ox = np.int64(np.floor(_fma(locations[i, j, 0], half[0], shift[s, 0])))
            oy = np.int64(np.floor(_fma(locations[i, j, 1], half[1], shift[s, 1])))
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
                if single[s]:  # whole pixels (crop, area at ratio 1, bilinear at ratio 1): one read each
                    for ky in range(n):
                        r0, y0 = ry[ky, 0], wy[ky, 0]
                        for kx in range(n):
                            o[ky, kx] = y0 * (wx[kx, 0] * np.float32(img[r0, rx[kx, 0]])) / divisor
                elif m == 2:  # bilinear: the 2 x 2 pixels around each point (the divisor folded into the row weights)
                    for ky in range(n):
                        r0, r1, y0, y1 = ry[ky, 0], ry[ky, 1], wy[ky, 0] / divisor, wy[ky, 1] / divisor
                        for kx in range(n):
                            c0, c1, x0, x1 = rx[kx, 0], rx[kx, 1], wx[kx, 0], wx[kx, 1]
                            top = x0 * np.float32(img[r0, c0]) + x1 * np.float32(img[r0, c1])
                            bottom = x0 * np.float32(img[r1, c0]) + x1 * np.float32(img[r1, c1])
                            o[ky, kx] = y0 * top + y1 * bottom
                else:
                    # area: each point is its block's mean, the sum of its pixels inside the image times 1 / its sides
                    cx0, cx1 = np.empty(n, np.int64), np.empty(n, np.int64)
                    sums = np.empty(n * m, np.float32)  # a window is at most n blocks of m pixels
                    for k in range(n):  # each block's columns inside the image: a run of whole pixels
                        first, count = ox + taps[s, k, 0], 0
                        for a in range(m):
                            count += weights[s, k, a] != 0
                        cx0[k], cx1[k] = max(first, 0), min(first + count, w)
                    x0, x1 = cx0[0], max(cx1[n - 1], cx0[0])  # the window's columns inside the image
                    for ky in range(n):
                        sums[:] = 0  # the window row's column sums over the block's rows inside the image
                        for a in range(m):
                            if wy[ky, a] != 0:
                                row = img[ry[ky, a], x0:x1]  # a row slice indexed from 0: the loop below vectorises
                                for q in range(x1 - x0):
                                    sums[q] += np.float32(row[q])
                        for kx in range(n):
                            total = np.float32(0)
                            for q in range(cx0[kx] - x0, cx1[kx] - x0):
                                total += sums[q]
                            o[ky, kx] = total * (weights[s, ky, 0] * weights[s, kx, 0]) / divisor


DIVISORS = {torch.uint8: np.float32(255), torch.float32: np.float32(1)}  # uint8 pixels read as value / 255


def read(images: Tensor, locations: Tensor, half: Tensor, shift: Tensor, taps: np.ndarray, weights: np.ndarray,
         single: np.ndarray, out: Tensor | None = None) -> Tensor:
    """The retina's patches (B, N, S, C, n, n), float32, from CPU `images` (B, C, H, W) uint8 (as /255) or float32.

    `locations` (B, N, 2) and the pixel units `half` (2,) and `shift` (S, 2) in one float dtype; `taps`, `weights`
    (S, n, m) and `single` (S,) as `_read` takes them (`glimpse.sensor._taps` makes them). `out`, if given,
    receives the patches (any strides: RAM writes them straight into its per-step input rows).
    """
    if images.dtype not in DIVISORS:
        raise TypeError(f"the CPU retina reads uint8 or float32 images, not {images.dtype}")
    if out is None:
        b, c = images.shape[:2]
        out = torch.empty(b, locations.shape[1], shift.shape[0], c, taps.shape[1], taps.shape[1])
    _threads()
    _read(images.contiguous().numpy(), locations.numpy(), half.numpy(), shift.numpy(), taps, weights, single,
          DIVISORS[images.dtype], out.numpy())
    return out


@njit(parallel=True, cache=True, nogil=True, boundscheck=False)
def _paste(images, top, left, pool, other, cy, cx, py, px, d, out):  # pragma: no cover - compiled
    """out[i] = images[i] at (top, left) plus pool[other[i, k]]'s d x d piece at (cy, cx) put at (py, px),
    capped at 255."""
    b, c, h, w = images.shape
    size = out.shape[2]
    for i in prange(b):
        for ch in range(c):
            o, img = out[i, ch], images[i, ch]
            for y in range(size):  # plain loops: numba's slice assignment was slower here
                for x in range(size):
                    o[y, x] = 0
            for y in range(h):
                for x in range(w):
                    o[top[i] + y, left[i] + x] = img[y, x]
            for k in range(other.shape[1]):
                src = pool[other[i, k], ch]
                sy, sx, dy, dx = cy[i, k], cx[i, k], py[i, k], px[i, k]
                for y in range(d):
                    for x in range(d):
                        o[dy + y, dx + x] = min(np.int32(o[dy + y, dx + x]) + np.int32(src[sy + y, sx + x]), 255)


def paste(images: Tensor, size: int, top: Tensor, left: Tensor, pool: Tensor, other: Tensor, cy: Tensor, cx: Tensor,
          py: Tensor, px: Tensor, d: int) -> Tensor:
    """uint8 canvases (B, C, size, size): `images` at (top, left), plus the clutter pieces (B, K), summed and
    capped at 255.

    Adding one piece at a time and capping each sum equals capping the whole sum (every term is >= 0).
    """
    b, c = images.shape[:2]
    out = torch.empty(b, c, size, size, dtype=torch.uint8)
    _threads()
    arrays = (t.contiguous().numpy() for t in (images, top, left, pool, other, cy, cx, py, px))
    _paste(*arrays, d, out.numpy())
    return out
