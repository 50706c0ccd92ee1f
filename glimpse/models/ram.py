"""The Recurrent Attention Model (Mnih, Heess, Graves, Kavukcuoglu 2014): hard attention trained with REINFORCE.

At each step t the sensor reads a glimpse rho(x, l_t) at location l_t, the
glimpse network encodes it with its location, the core network updates its
state h_t, and the location network samples where to look next. After T
glimpses the action network classifies from h_T. The location network sees
the core state detached, so it learns only from REINFORCE (see objectives.py);
the baseline network sees it detached too and learns only its squared error.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.models.common import Episode
from glimpse.sensor import Sensor


class GlimpseNetwork(nn.Module):
    """g_t = ReLU(Linear(h_g) + Linear(h_l)), with h_g = ReLU(Linear(rho(x, l))) and h_l = ReLU(Linear(l))."""

    def __init__(self, in_features: int, what: int = 128, where: int = 128, out: int = 256):
        super().__init__()
        self.what = nn.Linear(in_features, what)  # h_g: what was seen
        self.where = nn.Linear(2, where)  # h_l: where it was seen
        self.what_out = nn.Linear(what, out)
        self.where_out = nn.Linear(where, out)

    def forward(self, patches: Tensor, locations: Tensor) -> Tensor:
        h_g = F.relu(self.what(patches.flatten(1)))
        h_l = F.relu(self.where(locations))
        return F.relu(self.what_out(h_g) + self.where_out(h_l))


class CoreNetwork(nn.Module):
    """h_t = f_h(h_{t-1}, g_t): `rnn` is the paper's ReLU(Linear(h_{t-1}) + Linear(g_t)); or an LSTM or GRU cell."""

    CELLS = {"rnn": lambda i, h: nn.RNNCell(i, h, nonlinearity="relu"), "lstm": nn.LSTMCell, "gru": nn.GRUCell}

    def __init__(self, kind: str, in_features: int, hidden: int):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        self.cell = self.CELLS[kind](in_features, hidden)

    def initial(self, batch: int, device: torch.device) -> Tensor | tuple[Tensor, Tensor]:
        h = torch.zeros(batch, self.hidden, device=device)
        return (h, torch.zeros_like(h)) if self.kind == "lstm" else h

    def forward(self, g: Tensor, state: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        state = self.cell(g, state)
        return (state[0] if self.kind == "lstm" else state), state


class LocationNetwork(nn.Module):
    """l_{t+1} ~ N(mu, std^2 I) with mu = tanh(Linear(h_t)) on the detached core state; l clamped to [-1, 1]."""

    def __init__(self, hidden: int, std: float):
        super().__init__()
        self.fc = nn.Linear(hidden, 2)
        self.std = std

    def forward(self, h: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (mean, sampled location before clamping, log pi of that sample)."""
        mu = torch.tanh(self.fc(h.detach()))
        if greedy:
            sample = mu.detach()
        else:
            sample = mu.detach() + self.std * torch.randn(mu.shape, generator=generator, device=mu.device)
        # log N(sample; mu, std^2), summed over x and y; the gradient reaches mu only.
        log_pi = -((sample - mu) ** 2).sum(-1) / (2 * self.std**2) - 2 * math.log(self.std) - math.log(2 * math.pi)
        return mu, sample, log_pi


class BaselineNetwork(nn.Module):
    """b_t = Linear(h_t) on the detached core state: the expected reward, subtracted to reduce variance."""

    def __init__(self, hidden: int):
        super().__init__()
        self.fc = nn.Linear(hidden, 1)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h.detach()).squeeze(-1)


class ActionNetwork(nn.Module):
    """p(y | h_T) = softmax(Linear(h_T)): the classifier on the last core state."""

    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(hidden, classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h)


class RAM(nn.Module):
    """Recurrent Attention Model: sensor, glimpse, core, location, baseline and action networks."""

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
        std: float = 0.1,
        eval_start: str = "centre",
    ):
        super().__init__()
        channels = image_shape[0]
        self.image_shape, self.glimpses, self.eval_start = tuple(image_shape), glimpses, eval_start
        self.sensor = Sensor(patch, scales, scale_factor)
        self.glimpse_net = GlimpseNetwork(scales * channels * patch * patch, what, where, glimpse_out)
        self.core = CoreNetwork(core, glimpse_out, hidden)
        self.location_net = LocationNetwork(hidden, std)
        self.baseline_net = BaselineNetwork(hidden)
        self.action_net = ActionNetwork(hidden, classes)

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> "RAM":
        m, s = cfg.model, cfg.sensor
        return cls(
            image_shape, classes, glimpses=m.glimpses, patch=s.patch, scales=s.scales, scale_factor=s.scale_factor,
            what=m.what, where=m.where, glimpse_out=m.glimpse_out, hidden=m.hidden, core=m.core, std=m.std,
            eval_start=m.eval_start,
        )

    def start(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """l_1: uniform at random in training; at evaluation random or the centre (`model.eval_start`)."""
        if self.training or self.eval_start == "random":
            return torch.rand(batch, 2, generator=generator, device=device) * 2 - 1
        return torch.zeros(batch, 2, device=device)

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        b, device = images.shape[0], images.device
        loc = self.start(b, device, generator)
        state = self.core.initial(b, device)
        locations, log_pis, baselines, means = [loc], [], [], []
        for t in range(self.glimpses):
            g = self.glimpse_net(self.sensor(images, loc), loc)
            h, state = self.core(g, state)
            if t == self.glimpses - 1:
                break  # no location after the last glimpse: nothing unused enters REINFORCE
            mu, sample, log_pi = self.location_net(h, greedy, generator)
            loc = sample.clamp(-1, 1)
            locations.append(loc)
            log_pis.append(log_pi)
            means.append(mu)
            baselines.append(self.baseline_net(h))
        stack = lambda xs: torch.stack(xs, 1) if xs else None  # noqa: E731
        return Episode(self.action_net(h), torch.stack(locations, 1), stack(log_pis), stack(baselines), stack(means))
