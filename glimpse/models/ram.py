"""The Recurrent Attention Model (Mnih, Heess, Graves, Kavukcuoglu 2014): hard attention trained with REINFORCE.

The paper's parts, each a module below under its name (B images, T glimpses, l_t in [-1, 1]^2):

    sensor             rho(x, l_t): patches of the images around l_t           Sensor (glimpse/sensor.py)
    glimpse network    g_t = f_g(rho(x, l_t), l_t)                             GlimpseNetwork
    core network       h_t = f_h(h_{t-1}, g_t)                                 CoreNetwork
    location network   l_{t+1} ~ N(f_l(h_t), std^2 I), clamped to [-1, 1]      LocationNetwork
    baseline network   b_t = f_b(h_t)                                          BaselineNetwork
    action network     p(y | h_T) = softmax(f_a(h_T))                          ActionNetwork

At each step t the sensor reads a glimpse rho(x, l_t) at location l_t, the
glimpse network encodes it with its location, the core network updates its
state h_t, and the location network samples where to look next. After T
glimpses the action network classifies from h_T. The location network sees
the core state detached, so it learns only from REINFORCE (see objectives.py);
the baseline network sees it detached too and learns only its squared error.

RAM.episode is that loop, step by step. The file's last section is a fast path
for the paper's core (core="rnn"): the same episode as few large operations with
hand-written backpropagation through time, used when `fused` (`model.fused`) is on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.models.common import Episode, start_locations
from glimpse.sensor import Sensor


class GlimpseNetwork(nn.Module):
    """Glimpse network: g_t = ReLU(Linear(h_g) + Linear(h_l)), h_g = ReLU(Linear(rho(x, l))), h_l = ReLU(Linear(l)).

    The two outer Linear maps are held as one Linear on [h_g, h_l]: the same
    function and parameter count, one matrix product instead of two.
    """

    def __init__(self, in_features: int, what: int = 128, where: int = 128, out: int = 256):
        super().__init__()
        self.what = nn.Linear(in_features, what)  # h_g: what was seen
        self.where = nn.Linear(2, where)  # h_l: where it was seen
        self.out = nn.Linear(what + where, out)  # Linear(h_g) + Linear(h_l)

    def forward(self, patches: Tensor, locations: Tensor) -> Tensor:
        """g_t (B, out) from the patches rho(x, l_t) (B, scales, C, patch, patch) and the locations l_t (B, 2)."""
        h_g = F.relu(self.what(patches.flatten(1)))
        h_l = F.relu(self.where(locations))
        return F.relu(self.out(torch.cat((h_g, h_l), 1)))


class CoreNetwork(nn.Module):
    """Core network: h_t = f_h(h_{t-1}, g_t), `rnn` the paper's ReLU(Linear(h_{t-1}) + Linear(g_t)); or LSTM, GRU.

    For `rnn` the two Linear maps are held as one on [g_t, h_{t-1}] (one matrix product).
    """

    def __init__(self, kind: str, in_features: int, hidden: int):
        super().__init__()
        self.kind, self.hidden = kind, hidden
        if kind == "rnn":
            self.cell = nn.Linear(in_features + hidden, hidden)
        else:
            self.cell = {"lstm": nn.LSTMCell, "gru": nn.GRUCell}[kind](in_features, hidden)

    def forward(
        self, g: Tensor, state: Tensor | tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor | tuple[Tensor, Tensor]]:
        """(h_t (B, hidden), state_t) from g_t (B, in_features) and state_{t-1}; None is the zero state h_0 = 0.

        The state is h_t itself, or the LSTM's pair (h_t, c_t).
        """
        if self.kind == "rnn":
            if state is None:  # h_0 = 0: skip its half of the product
                h = F.relu(F.linear(g, self.cell.weight[:, : g.shape[1]], self.cell.bias))
            else:
                h = F.relu(self.cell(torch.cat((g, state), 1)))
            return h, h
        state = self.cell(g, state)
        return (state[0] if self.kind == "lstm" else state), state


class LocationNetwork(nn.Module):
    """Location network: l_{t+1} ~ N(mu_t, std^2 I), mu_t = tanh(Linear(h_t)) on the detached h_t; l in [-1, 1].

    `std` is a buffer, not a constant: a schedule (`model.std_final`) changes it in place between epochs, a
    checkpoint keeps the value its weights were trained with, and a captured CUDA graph reads the current one.
    """

    def __init__(self, hidden: int, std: float):
        super().__init__()
        self.fc = nn.Linear(hidden, 2)
        self.register_buffer("std", torch.tensor(float(std)))
        self.configured_std = float(std)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before std was a buffer were trained at the constructor's (the config's) std.
        state_dict.setdefault(prefix + "std", torch.tensor(self.configured_std))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, h: Tensor) -> Tensor:
        """mu_t (..., 2), the policy's mean, from the core state h_t (..., hidden)."""
        return torch.tanh(self.fc(h.detach()))

    def log_prob(self, samples: Tensor, mu: Tensor) -> Tensor:
        """log N(samples; mu, std^2 I) (...) of samples and mu (..., 2), summed over x and y; only mu has a gradient."""
        return (-((samples.detach() - mu) ** 2).sum(-1) / (2 * self.std**2) - 2 * torch.log(self.std)
                - math.log(2 * math.pi))


class BaselineNetwork(nn.Module):
    """Baseline network: b_t = Linear(h_t) on the detached h_t, the expected reward, subtracted to reduce variance."""

    def __init__(self, hidden: int):
        super().__init__()
        self.fc = nn.Linear(hidden, 1)

    def forward(self, h: Tensor) -> Tensor:
        """b_t (...) from the core state h_t (..., hidden)."""
        return self.fc(h.detach()).squeeze(-1)


class ActionNetwork(nn.Module):
    """Action network: p(y | h_T) = softmax(Linear(h_T)), the classifier on the last core state."""

    def __init__(self, hidden: int, classes: int):
        super().__init__()
        self.fc = nn.Linear(hidden, classes)

    def forward(self, h: Tensor) -> Tensor:
        """The logits (B, classes) from h_T (B, hidden); the softmax is the loss's."""
        return self.fc(h)


class RAM(nn.Module):
    """Recurrent Attention Model: the sensor and the glimpse, core, location, baseline and action networks.

    `fused` (`model.fused`): with core="rnn" and T >= 2 glimpses, `episode` hands the episode to the fast path
    at the end of this file (`fused_episode`): the same values and gradients, faster. False, or another core:
    the per-step loop in `episode`, autograd throughout.
    """

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
        std: float = 0.15,
        eval_start: str = "centre",
        fused: bool = True,
        greedy_fraction: float = 0.0,
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
        self.fused = fused
        self.greedy_fraction = greedy_fraction

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> RAM:
        m, s = cfg.model, cfg.sensor
        # Configs written before model.fused existed ran the fused episode: the default.
        return cls(
            image_shape, classes, glimpses=m.glimpses, patch=s.patch, scales=s.scales, scale_factor=s.scale_factor,
            resize=s.get("resize", "area"), what=m.what, where=m.where, glimpse_out=m.glimpse_out, hidden=m.hidden,
            core=m.core, std=m.std, eval_start=m.eval_start, fused=m.get("fused", True),
            greedy_fraction=m.get("greedy_fraction", 0.0),
        )

    def start(self, batch: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
        """l_1 (B, 2): uniform at random in training; at evaluation random or the centre (`model.eval_start`)."""
        return start_locations(batch, device, generator, self.training or self.eval_start == "random")

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        """One episode on `images` (B, C, H, W), its randomness drawn from `generator`; greedy: the policy's means."""
        return self.episode(images, *self.draws(images.shape[0], images.device, generator, greedy))

    def draws(
        self, batch: int, device: torch.device, generator: torch.Generator | None, greedy: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """An episode's randomness, drawn in this order: l_1 and the policy's noise (B, T-1, 2) (None when greedy).

        In training, the first `greedy_fraction` of the rows get no noise: those episodes follow the policy's means,
        so the classifier also learns from the glimpses the greedy policy takes (their samples equal the means, so
        they add nothing to REINFORCE's gradient).
        """
        start = self.start(batch, device, generator)
        noise = (None if greedy else
                 self.location_net.std * torch.randn(batch, self.glimpses - 1, 2, generator=generator, device=device))
        if noise is not None and self.training and self.greedy_fraction:
            noise[: round(batch * self.greedy_fraction)] = 0
        return start, noise

    def episode(self, images: Tensor, loc: Tensor, noise: Tensor | None) -> Episode:
        """One episode on `images` (B, C, H, W) from l_1 = `loc` (B, 2), with the policy's noise (B, T-1, 2) given
        (None: greedy, the means).

        The Episode holds the logits (B, classes), the locations (B, T, 2), and log pi(l_{t+1} | h_t), b_t (B, T-1)
        and mu_t (B, T-1, 2) for the T-1 sampled locations.
        """
        images = self.sensor.readable(images)
        if self.fused and self.core.kind == "rnn" and self.glimpses > 1:
            return fused_episode(self, images, loc, noise)
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
        if steps == 1:  # one glimpse: no location was sampled
            return Episode(self.action_net(h), torch.stack(locations, 1))
        # The policy's means and the baselines for all steps at once, now that the episode is known:
        # the same values as inside the loop, in one product each, and differentiable.
        states = torch.stack(hs[:-1])
        return self.outcome(h, torch.stack(locations, 1), torch.stack(samples), self.location_net(states),
                            self.baseline_net(states))

    def outcome(self, h_last: Tensor, locations: Tensor, samples: Tensor, means: Tensor, baselines: Tensor) -> Episode:
        """The Episode from h_T, the locations (B, T, 2), and the samples, means (T-1, B, 2) and baselines (T-1, B).

        Time-major in, as both the loop and the fast path produce them; batch-major out, as Episode holds them.
        """
        log_pi = self.location_net.log_prob(samples, means)
        return Episode(self.action_net(h_last), locations, log_pi.t(), baselines.t(), means.transpose(0, 1))


# ---------------------------------------------------------------------------------------------------------------------
# The fast path: RAM's episode with core="rnn", as few large operations with hand-written backpropagation through time.
#
# What: RNNEpisode computes what RAM.episode's loop computes with core="rnn" (the glimpse, core, location and baseline
# networks; the action network stays autograd's), writing every step into preallocated buffers, and differentiates it
# by hand so that each weight's gradient is one matrix product over all T steps instead of T small ones.
# When: RAM.episode uses it when `fused` (config `model.fused`, default true because it is the faster of the two,
# experiments/fused_vs_plain.py) is on, the core is `rnn` and T >= 2; otherwise the loop above runs.
# Held equal: tests/test_ram.py::test_hand_written_bptt_equals_autograd_through_the_plain_loop builds the two with
# fused=True and fused=False and compares the episodes and every gradient in float64; tests/test_cuda.py compares
# the episode on CUDA with the CPU's.
# ---------------------------------------------------------------------------------------------------------------------


def fused_episode(model: RAM, images: Tensor, loc: Tensor, noise: Tensor | None) -> Episode:
    """RAM.episode for core="rnn" and T >= 2 through RNNEpisode: the same values and gradients, fewer operations.

    `images` as `model.sensor.readable` made them; `loc` (B, 2) and `noise` (B, T-1, 2) as RAM.episode takes them.
    """
    g, c = model.glimpse_net, model.core.cell
    # Under torch.autocast (trainer.precision=bf16) RNNEpisode makes its large products in autocast's dtype
    # itself: autocast would cast the small ones too, and the heads, each step.
    kind = images.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else c.weight.dtype
    with torch.autocast(kind, enabled=False):
        h_last, heads, locations, samples = RNNEpisode.apply(
            images, loc, noise, model.sensor, model.glimpses, dtype, g.what.weight, g.what.bias, g.where.weight,
            g.where.bias, g.out.weight, g.out.bias, c.weight, c.bias, model.location_net.fc.weight,
            model.location_net.fc.bias, model.baseline_net.fc.weight, model.baseline_net.fc.bias)
    return model.outcome(h_last, locations.transpose(0, 1), samples, heads[..., :2], heads[..., 2])


class RNNEpisode(torch.autograd.Function):
    """RAM's episode with the `rnn` core: glimpse, core, location and baseline networks, backpropagation by hand.

    The same function as RAM.episode's loop with core="rnn" (tests compare the
    two), built for speed: few and large operations. The forward writes every
    step into preallocated buffers (the sensor its patches too), and the location
    and baseline networks run as one product [mu_t, b_t] on h_t. The backward
    runs only the recurrence step by step, dpre_t = (dh_t + dpre_{t+1} W_hh) * [h_t > 0],
    and each weight's gradient is one matrix product over all T steps (autograd
    would do T small ones).
    Gradients: the location and baseline networks read h_t detached (as in the
    paper), so only h_T, through the action network, carries a gradient into the
    core; the means and baselines carry theirs into their own weights only. The
    samples and locations have none, and images need none.
    `dtype` is the products' dtype: the weights' (float32), or bfloat16 under trainer.precision=bf16, in which
    case the core and the glimpse network's output layer multiply and keep their activations in bfloat16 and
    the backward's products are bfloat16; the forward's small what/where products, the heads (so the
    locations) and the gradients handed back stay float32.
    For T >= 2 glimpses (one glimpse samples no location: RAM runs its plain loop).
    Returns h_T (B, hidden), the heads [mu_t (2), b_t] (T-1, B, 3) and, without
    gradient, the locations (T, B, 2) and the samples (T-1, B, 2).
    """

    @staticmethod
    def forward(
        ctx, images: Tensor, loc: Tensor, noise: Tensor | None, sensor: Sensor, steps: int, dtype: torch.dtype,
        w_what: Tensor, b_what: Tensor, w_where: Tensor, b_where: Tensor, w_out: Tensor, b_out: Tensor,
        w_core: Tensor, b_core: Tensor, w_loc: Tensor, b_loc: Tensor, w_base: Tensor, b_base: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b, (what, p), g_size = images.shape[0], w_what.shape, w_out.shape[0]
        new = loc.new_empty  # float32, whatever the images' dtype (uint8 as the data layer serves them)
        # products read x @ W.t(): the transposes (and casts to `dtype`) once, not every step
        w_what_t, w_where_t, w_out_t = w_what.t(), w_where.t(), w_out.t().to(dtype)
        w_ig, w_hh = w_core[:, :g_size].t().to(dtype), w_core[:, g_size:].t().to(dtype)
        w_heads, b_heads = torch.cat((w_loc, w_base)).t(), torch.cat((b_loc, b_base))  # [mu, b] from h
        # rho(x, l_t) and l_t per step (contiguous: the sensor writes its rows)
        patches, locs = new(steps, b, p), new(steps, b, 2)
        # Each layer's outputs for all steps start as its bias (one copy each); the products add into them.
        # y: [h_g, h_l] per step, the glimpse network's hidden layer
        y = torch.cat((b_what, b_where)).expand(steps, b, -1).clone()
        cast = dtype != y.dtype
        y_in = y.new_empty(y.shape, dtype=dtype) if cast else y  # y as the output layer reads it (and the backward)
        gs = b_out.to(dtype).expand(steps, b, -1).clone()
        hs = b_core.to(dtype).expand(steps, b, -1).clone()
        heads = new(steps - 1, b, 3)
        samples = new(steps - 1, b, 2)
        locs[0] = loc
        for t, (x, l_t, y_t, y_in_t, g, h) in enumerate(zip(patches, locs, y, y_in, gs, hs, strict=True)):
            sensor(images, l_t, out=x.view(b, sensor.scales, -1, sensor.patch, sensor.patch))
            y_t[:, :what].addmm_(x, w_what_t)
            y_t[:, what:].addmm_(l_t, w_where_t)
            y_t.relu_()
            if cast:
                y_in_t.copy_(y_t)
            g.addmm_(y_in_t, w_out_t).relu_()
            h.addmm_(g, w_ig)
            if t:  # h_0 = 0: the first step has no recurrent term
                h.addmm_(hs[t - 1], w_hh)
            h.relu_()
            if t == steps - 1:
                break
            mu = torch.addmm(b_heads, h.to(heads.dtype), w_heads, out=heads[t])[:, :2].tanh_()
            sample = samples[t].copy_(mu) if noise is None else torch.add(mu, noise[:, t], out=samples[t])
            torch.clamp(sample, -1, 1, out=locs[t + 1])
        ctx.save_for_backward(patches, locs, y_in, gs, hs, heads, w_out, w_core)
        ctx.what = what
        locations = locs.clone()
        ctx.mark_non_differentiable(locations, samples)
        return hs[-1].to(loc.dtype, copy=True), heads, locations, samples

    @staticmethod
    def backward(ctx, d_last: Tensor, d_heads: Tensor, _d_locations: Tensor, _d_samples: Tensor):
        patches, locs, y, gs, hs, heads, w_out, w_core = ctx.saved_tensors
        steps, g_size, what = hs.shape[0], w_out.shape[0], ctx.what
        # the products' dtype (the forward's `dtype`), the weights' (and their gradients')
        dt, f = hs.dtype, w_core.dtype
        patches, locs = patches.to(dt), locs.to(dt)  # for the what/where weights' gradients
        flat = lambda z: z.flatten(0, 1)  # noqa: E731  (T, B, n) -> (T * B, n): all steps in one product
        # the heads on the detached h_t: b_t = pre passes its gradient as it is, mu_t = tanh(pre) scales it by 1 - mu^2
        d_pre_heads = d_heads.clone()
        d_pre_heads[..., :2] *= 1 - heads[..., :2] ** 2
        d_w_heads, d_b_heads = (flat(d_pre_heads).t().to(dt) @ flat(hs[:-1])).to(f), flat(d_pre_heads).sum(0)
        w_hh = w_core[:, g_size:].to(dt)
        d_pre = torch.empty_like(hs)  # dL/d(pre-activation of h_t)
        for t in reversed(range(steps)):
            d_h = d_last.to(dt) if t == steps - 1 else d_pre[t + 1] @ w_hh
            torch.ops.aten.threshold_backward.grad_input(d_h, hs[t], 0, grad_input=d_pre[t])
        d_w_ig = flat(d_pre).t() @ flat(gs)
        d_w_hh = flat(d_pre[1:]).t() @ flat(hs[:-1])
        d_w_core, d_b_core = torch.cat((d_w_ig, d_w_hh), 1).to(f), flat(d_pre).sum(0, dtype=f)
        d_g = torch.ops.aten.threshold_backward(flat(d_pre) @ w_core[:, :g_size].to(dt), flat(gs), 0)
        d_w_out, d_b_out = (d_g.t() @ flat(y)).to(f), d_g.sum(0, dtype=f)
        d_y = torch.ops.aten.threshold_backward(d_g @ w_out.to(dt), flat(y), 0)
        d_b_in = d_y.sum(0, dtype=f)
        d_w_what, d_w_where = (d_y[:, :what].t() @ flat(patches)).to(f), (d_y[:, what:].t() @ flat(locs)).to(f)
        return (None, None, None, None, None, None, d_w_what, d_b_in[:what], d_w_where, d_b_in[what:], d_w_out, d_b_out,
                d_w_core, d_b_core, d_w_heads[:2], d_b_heads[:2], d_w_heads[2:], d_b_heads[2:])
