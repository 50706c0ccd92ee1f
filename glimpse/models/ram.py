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

from glimpse.models.common import Episode, start_locations
from glimpse.sensor import Sensor


class GlimpseNetwork(nn.Module):
    """g_t = ReLU(Linear(h_g) + Linear(h_l)), with h_g = ReLU(Linear(rho(x, l))) and h_l = ReLU(Linear(l)).

    The two outer Linear maps are held as one Linear on [h_g, h_l]: the same
    function and parameter count, one matrix product instead of two.
    """

    def __init__(self, in_features: int, what: int = 128, where: int = 128, out: int = 256):
        super().__init__()
        self.what = nn.Linear(in_features, what)  # h_g: what was seen
        self.where = nn.Linear(2, where)  # h_l: where it was seen
        self.out = nn.Linear(what + where, out)  # Linear(h_g) + Linear(h_l)

    def forward(self, patches: Tensor, locations: Tensor) -> Tensor:
        h_g = F.relu(self.what(patches.flatten(1)))
        h_l = F.relu(self.where(locations))
        return F.relu(self.out(torch.cat((h_g, h_l), 1)))


class CoreNetwork(nn.Module):
    """h_t = f_h(h_{t-1}, g_t): `rnn` is the paper's ReLU(Linear(h_{t-1}) + Linear(g_t)); or an LSTM or GRU cell.

    For `rnn` the two Linear maps are held as one on [g_t, h_{t-1}] (one matrix product).
    """

    def __init__(self, kind: str, in_features: int, hidden: int):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        if kind == "rnn":
            self.cell = nn.Linear(in_features + hidden, hidden)
        else:
            self.cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](in_features, hidden)

    def forward(self, g: Tensor, state: Tensor | tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """(h_t, state_t) from g_t and state_{t-1}; state None is the zero state h_0 = 0."""
        if self.kind == "rnn":
            if state is None:  # h_0 = 0: skip its half of the product
                h = F.relu(F.linear(g, self.cell.weight[:, : g.shape[1]], self.cell.bias))
            else:
                h = F.relu(self.cell(torch.cat((g, state), 1)))
            return h, h
        state = self.cell(g, state)
        return (state[0] if self.kind == "lstm" else state), state


class LocationNetwork(nn.Module):
    """l_{t+1} ~ N(mu_t, std^2 I) with mu_t = tanh(Linear(h_t)) on the detached core state; l clamped to [-1, 1]."""

    def __init__(self, hidden: int, std: float):
        super().__init__()
        self.fc = nn.Linear(hidden, 2)
        self.std = std

    def forward(self, h: Tensor) -> Tensor:
        """mu_t, the policy's mean."""
        return torch.tanh(self.fc(h.detach()))

    def log_prob(self, samples: Tensor, mu: Tensor) -> Tensor:
        """log N(samples; mu, std^2 I), summed over x and y; the gradient reaches mu only."""
        return -((samples.detach() - mu) ** 2).sum(-1) / (2 * self.std**2) - 2 * math.log(self.std) - math.log(2 * math.pi)


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

    stochastic = True  # the location policy samples: evaluation averages M runs

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        classes: int = 10,
        glimpses: int = 6,
        patch: int = 8,
        scales: int = 1,
        scale_factor: float = 2.0,
        resize: str = "area",
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
        self.sensor = Sensor(patch, scales, scale_factor, resize)
        self.glimpse_net = GlimpseNetwork(scales * channels * patch * patch, what, where, glimpse_out)
        self.core = CoreNetwork(core, glimpse_out, hidden)
        self.location_net = LocationNetwork(hidden, std)
        self.baseline_net = BaselineNetwork(hidden)
        self.action_net = ActionNetwork(hidden, classes)

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> "RAM":
        m, s = cfg.model, cfg.sensor
        return cls(
            image_shape, classes, glimpses=m.glimpses, patch=s.patch, scales=s.scales, scale_factor=s.scale_factor, resize=s.get("resize", "area"),
            what=m.what, where=m.where, glimpse_out=m.glimpse_out, hidden=m.hidden, core=m.core, std=m.std,
            eval_start=m.eval_start,
        )

    def start(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """l_1: uniform at random in training; at evaluation random or the centre (`model.eval_start`)."""
        return start_locations(batch, device, generator, self.training or self.eval_start == "random")

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        b, device = images.shape[0], images.device
        start = self.start(b, device, generator)
        noise = None if greedy else self.location_net.std * torch.randn(b, self.glimpses - 1, 2, generator=generator, device=device)
        return self.episode(images, start, noise)

    def episode(self, images: Tensor, loc: Tensor, noise: Tensor | None) -> Episode:
        """One episode from l_1 = `loc`, with the policy's noise (B, T-1, 2) given (None: greedy, the means)."""
        steps = self.glimpses
        state = None
        hs, locations, samples = [], [loc], []
        for t in range(steps):
            g = self.glimpse_net(self.sensor(images, loc), loc)
            h, state = self.core(g, state)
            hs.append(h)
            if t == steps - 1:
                break  # no location after the last glimpse: nothing unused enters REINFORCE
            with torch.no_grad():
                sample = self.location_net(h)
                if noise is not None:
                    sample = sample + noise[:, t]
            loc = sample.clamp(-1, 1)
            samples.append(sample)
            locations.append(loc)
        if steps == 1:
            return Episode(self.action_net(h), torch.stack(locations, 1))
        # The policy's means and the baselines for all steps at once, now that the episode is known:
        # the same values as inside the loop, in one matrix product each, and differentiable.
        states = torch.stack(hs[:-1], 1)
        means = self.location_net(states)
        log_pi = self.location_net.log_prob(torch.stack(samples, 1), means)
        return Episode(self.action_net(h), torch.stack(locations, 1), log_pi, self.baseline_net(states), means)
