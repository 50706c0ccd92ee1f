"""Differentiable glimpses: RAM whose location network is trained by backpropagation, not REINFORCE.

The location network outputs the next location deterministically and the
sensor samples the patches bilinearly at that exact, unrounded position, so the
loss's gradient flows through the pixels read into where to look (the
"differentiable RAM" discussed with DRAW, Gregor et al. 2015). Glimpse, core
and action networks are RAM's; there is no baseline and no REINFORCE term.

`location_grad_to_core` says whether the gradient that reaches a location goes on
into the core network. With it off (the default), the location network reads the
core state detached, as RAM's does: the loss teaches its weights through the pixels
it chose, and the core learns from the classifier alone. On the canvases the loop
h_t -> l_{t+1} -> pixels -> h_{t+1} otherwise drives every image's locations to one
border within ~200 steps, where the glimpses read zeros and the model stays at
chance; on MNIST, where the digit fills the image, the loop helps (README).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from glimpse.models.common import Episode, start_locations
from glimpse.models.ram import ActionNetwork, CoreNetwork, GlimpseNetwork
from glimpse.sensor import Sensor


class DRAM(nn.Module):
    """Sensor (bilinear, unsnapped), glimpse, core, deterministic location and action networks."""

    stochastic = False

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        classes: int = 10,
        glimpses: int = 6,
        patch: int = 8,
        scales: int = 1,
        scale_factor: float = 2.0,
        what: int = 128,
        where: int = 128,
        glimpse_out: int = 256,
        hidden: int = 256,
        core: str = "rnn",
        eval_start: str = "centre",
        location_grad_to_core: bool = False,
    ):
        super().__init__()
        channels = image_shape[0]
        self.image_shape, self.glimpses, self.eval_start = tuple(image_shape), glimpses, eval_start
        self.sensor = Sensor(patch, scales, scale_factor, "bilinear", snap=False)  # differentiable in the location
        self.glimpse_net = GlimpseNetwork(scales * channels * patch * patch, what, where, glimpse_out)
        self.core = CoreNetwork(core, glimpse_out, hidden)
        self.location_net = nn.Linear(hidden, 2)  # l_{t+1} = tanh(Linear(h_t))
        self.location_grad_to_core = location_grad_to_core
        self.action_net = ActionNetwork(hidden, classes)

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> "DRAM":
        m, s = cfg.model, cfg.sensor
        return cls(
            image_shape, classes, glimpses=m.glimpses, patch=s.patch, scales=s.scales, scale_factor=s.scale_factor,
            what=m.what, where=m.where, glimpse_out=m.glimpse_out, hidden=m.hidden, core=m.core,
            eval_start=m.eval_start,
            # Run folders from before the key lack it (trained either way): the forward is the same with or without
            # the cut, so re-scoring them works whatever this says; resuming them is refused for the missing key.
            location_grad_to_core=m.get("location_grad_to_core", True),
        )

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        b, device = images.shape[0], images.device
        # unsnapped glimpses are grid_sample's, on floats: made once, not every glimpse
        images = self.sensor.readable(images)
        loc = start_locations(b, device, generator, self.training or self.eval_start == "random")
        state, locations = None, [loc]
        for t in range(self.glimpses):
            h, state = self.core(self.glimpse_net(self.sensor(images, loc), loc), state)
            if t < self.glimpses - 1:
                loc = torch.tanh(self.location_net(h if self.location_grad_to_core else h.detach()))
                locations.append(loc)
        return Episode(self.action_net(h), torch.stack(locations, 1))
