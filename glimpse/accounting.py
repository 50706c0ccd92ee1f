"""Fair accounting of what a model costs: parameters, MACs per image, distinct pixels read."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from glimpse.models.common import Episode
from glimpse.models.draw import centres_of, filterbank
from glimpse.sensor import patch_origins

FILTER_WEIGHT = 1e-3  # a filterbank reads a pixel when some filter gives it more than this share of its weight


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


def filterbank_pixels_read(locations: Tensor, strides: Tensor, sigmas: Tensor, n: int, height: int, width: int,
                           threshold: float = FILTER_WEIGHT) -> Tensor:
    """Distinct image pixels (spatial positions, all channels) a DRAW read takes in, per image: (B,).

    A pixel (a, b) is read when some filter of some step gives it a normalised weight
    F_X[i, a] * F_Y[j, b] above `threshold` (1e-3): the weight the N x N filters put on it, each filter's
    weights summing to 1 over the image (glimpse.models.draw.filterbank). The grids come as the Episode gives
    them: centres as `locations` (B, T, 2), `strides` and `sigmas` (B, T) in pixels; `n` is N.
    A share is not a reach: a filter blurred over more than 1 / `threshold` pixels gives none of them that
    much, so a grid of such blurs counts few pixels, or none, however many it averages.
    """
    seen = torch.zeros(locations.shape[0], height, width, dtype=torch.bool, device=locations.device)
    for step in range(locations.shape[1]):
        f_x, f_y = filterbank(centres_of(locations[:, step], height, width), strides[:, step], sigmas[:, step], n,
                              height, width)
        # the largest F_X[i, a] F_Y[j, b] over i and j is the product of the two largest
        seen |= f_y.amax(1)[:, :, None] * f_x.amax(1)[:, None, :] > threshold
    return seen.flatten(1).sum(1).float()


def episode_pixels_read(episode: Episode, sides: list[int], height: int, width: int) -> Tensor:
    """Distinct image pixels read per image by the episode's model: `filterbank_pixels_read` for a DRAW read
    (`episode.reads`), else `pixels_read` of the locations with the sensor's patch `sides`."""
    if episode.reads is not None:
        return filterbank_pixels_read(episode.locations, episode.strides, episode.sigmas, episode.reads.shape[-1],
                                      height, width)
    return pixels_read(episode.locations, sides, height, width)
