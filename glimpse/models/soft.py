"""Recurrent soft attention: the differentiable counterpart of RAM, trained by backpropagation alone.

The image is covered by a grid of glimpses: the sensor's patches at grid
locations `model.stride` pixels apart. Each is encoded once by RAM's glimpse
network (what and where) into a key and a value. At each of the T steps a query
from the core state attends over all grid cells, softmax(q.k / sqrt(d)) per
head, and the weighted sum of values is the core network's input. The action
network classifies from the last core state. Sizes are RAM's.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from glimpse.models.common import Episode
from glimpse.models.ram import ActionNetwork, CoreNetwork, GlimpseNetwork
from glimpse.sensor import Sensor


def grid_locations(height: int, width: int, patch: int, stride: int) -> Tensor:
    """(N, 2) locations of patch x patch cells `stride` pixels apart, covering the image from corner to corner."""

    def centres(size: int) -> Tensor:
        last = max(size - patch, 0)
        starts = torch.arange(0, last + 1, stride, dtype=torch.float32)
        if starts[-1] != last:  # the last cell reaches the far edge
            starts = torch.cat([starts, torch.tensor([float(last)])])
        return (starts + patch / 2) / (size / 2) - 1

    ys, xs = torch.meshgrid(centres(height), centres(width), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], 1)


class SoftAttention(nn.Module):
    """Sensor on a grid, glimpse network to keys and values, multi-head attention from the core state."""

    stochastic = False

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        classes: int = 10,
        glimpses: int = 6,
        patch: int = 8,
        scales: int = 1,
        scale_factor: float = 2.0,
        resize: str = "area",
        stride: int = 4,
        heads: int = 4,
        what: int = 128,
        where: int = 128,
        glimpse_out: int = 256,
        hidden: int = 256,
        core: str = "rnn",
    ):
        super().__init__()
        channels, height, width = image_shape
        if hidden % heads:
            raise ValueError(f"model.hidden={hidden} must be divisible by model.heads={heads}")
        self.image_shape, self.glimpses, self.heads = tuple(image_shape), glimpses, heads
        self.sensor = Sensor(patch, scales, scale_factor, resize)
        self.register_buffer("cells", grid_locations(height, width, patch, stride), persistent=False)
        self.glimpse_net = GlimpseNetwork(scales * channels * patch * patch, what, where, glimpse_out)
        self.keys = nn.Linear(glimpse_out, hidden)
        self.values = nn.Linear(glimpse_out, hidden)
        self.query = nn.Linear(hidden, hidden)  # q_t = Linear(h_{t-1}); its bias is the first step's query
        self.core = CoreNetwork(core, hidden, hidden)
        self.action_net = ActionNetwork(hidden, classes)

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> "SoftAttention":
        m, s = cfg.model, cfg.sensor
        return cls(
            image_shape, classes, glimpses=m.glimpses, patch=s.patch, scales=s.scales, scale_factor=s.scale_factor,
            resize=s.resize, stride=m.stride, heads=m.heads, what=m.what, where=m.where, glimpse_out=m.glimpse_out,
            hidden=m.hidden, core=m.core,
        )

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        b, n = images.shape[0], self.cells.shape[0]
        cells = self.cells.expand(b, n, 2)
        patches = self.sensor(images, cells)  # (B, N, S, C, p, p): every cell read once
        g = self.glimpse_net(patches.flatten(0, 1), cells.reshape(b * n, 2)).view(b, n, -1)
        d = self.keys.out_features // self.heads
        keys = self.keys(g).view(b, n, self.heads, d).transpose(1, 2)  # (B, heads, N, d)
        values = self.values(g).view(b, n, self.heads, d).transpose(1, 2)
        h, state, weights = None, None, []
        for _ in range(self.glimpses):
            q = self.query(h) if h is not None else self.query.bias.expand(b, -1)
            q = q.view(b, self.heads, 1, d)
            alpha = torch.softmax((q @ keys.transpose(-1, -2)) / math.sqrt(d), -1)  # (B, heads, 1, N)
            context = (alpha @ values).reshape(b, -1)  # heads concatenated
            h, state = self.core(context, state)
            weights.append(alpha[:, :, 0])
        return Episode(self.action_net(h), locations=cells, attention=torch.stack(weights, 1))
