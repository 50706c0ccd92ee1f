"""What every model returns, so one objective, one evaluation and one visualiser serve them all."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Episode:
    logits: Tensor  # (B, classes): the action network's output after the last step
    locations: Tensor | None = None  # (B, T, 2): where each glimpse looked, in [-1, 1]^2 (soft: the N grid cells read)
    log_pi: Tensor | None = None  # (B, T-1): log pi(l_t | h_t) of each sampled location that was used
    baselines: Tensor | None = None  # (B, T-1): b_t, the baseline's reward prediction for those steps
    means: Tensor | None = None  # (B, T-1, 2): the location policy's means
    attention: Tensor | None = None  # (B, T, heads, N): soft attention's weights over the grid cells, per step
    # DRAW's read (model=draw), per step: an N x N grid of Gaussian filters centred on `locations`
    strides: Tensor | None = None  # (B, T): delta, pixels between neighbouring filter centres
    sigmas: Tensor | None = None  # (B, T): sigma, the filters' standard deviation in pixels
    gammas: Tensor | None = None  # (B, T): gamma, the read's intensity
    reads: Tensor | None = None  # (B, T, C, N, N): gamma F_Y x F_X^T, what each step read


def start_locations(batch: int, device: torch.device, generator: torch.Generator | None, random: bool) -> Tensor:
    """l_1: uniform at random over [-1, 1]^2, or the centre."""
    if random:
        return torch.rand(batch, 2, generator=generator, device=device) * 2 - 1
    return torch.zeros(batch, 2, device=device)
