"""DRAW's read attention used as a classifier (Gregor, Danihelka, Graves, Rezende, Wierstra 2015, section 3.2).

No writer and no VAE: the read, a core network and a classifier, the paper's "differentiable RAM" of its
cluttered-MNIST experiment. At each step an N x N grid of Gaussian filters, placed, spaced and blurred by the
core state, reads the image; every pixel near the grid enters the read, so the loss's gradient reaches where to
look, how far apart and how sharp, through all of them (dram's bilinear glimpse reaches only the 4 pixels
around each sample). B images (C, H, W) with A = W columns and B = H rows in the paper's names, T glimpses,
N = `patch` (`sensor.patch`):

    attention        (g~X, g~Y, log sigma^2, log delta~, log gamma) = Linear(h_{t-1})        (B, 5)
    grid centre      g_X = (A + 1) / 2 (g~X + 1),  g_Y = (B + 1) / 2 (g~Y + 1)                 (B, 2)
                     (centre="tanh": tanh(g~X), tanh(g~Y) in place of g~X, g~Y: inside the image)
    stride           delta = (max(A, B) - 1) / (N - 1) delta~                                  (B,)
    filter centres   mu_X^i = g_X + (i - N/2 - 0.5) delta,  mu_Y^j = g_Y + (j - N/2 - 0.5) delta   (B, N) each
    filterbank       F_X[i, a] = exp(-(a - mu_X^i)^2 / (2 sigma^2)) / Z_X,  Z_X = sum_a (...)   (B, N, A)
                     F_Y[j, b] = exp(-(b - mu_Y^j)^2 / (2 sigma^2)) / Z_Y                       (B, N, B)
    read             r_t = gamma F_Y x F_X^T, per channel                                      (B, C, N, N)
    glimpse network  g_t = ReLU(Linear(r_t))                                                   (B, glimpse_out)
    core network     h_t = f_h(h_{t-1}, g_t), an LSTM by default (ram.CoreNetwork)            (B, hidden)
    action network   p(y | h_T) = softmax(Linear(dropout(h_T))) (ram.ActionNetwork)            (B, classes)

Pixels a = 1 .. A and filters i = 1 .. N count from 1, as in the paper (the grid is then symmetric about g).
Pixel a is the image's column a - 1, which covers [a - 1, a) in the project's coordinates (docs/design.md,
glimpse/sensor.py), so a grid centre g_X lies at u = g_X - 1/2: location x = (2 g_X - 1) / A - 1, and g~X = 0
is the image's centre. The first read comes from h_0 = 0, so from the attention map's bias alone, the same
place for every image, as in the paper; the bias starts at the whole image with sigma half the filters'
spacing. Z_X and Z_Y are held away from 0 (`EPS`): a grid far outside the image reads zeros instead of dividing
by nothing. A filter's unnormalised weights below exp(-32) (`CUT`) are 0.

`centre="tanh"` (`model.centre`) is not the paper's: it squashes g~X, g~Y so that the grid centre cannot leave the
image (by more than half a pixel). On a large canvas a step of the unbounded map can move the grid where its
filters read nothing and give the centre no gradient back, and such a run never recovers
(experiments/results/draw/screening.md). At g~ = 0, the start, the two agree to first order.

The glimpse network embeds the read alone, not the five parameters: they are a deterministic function of
h_{t-1}, which the core already holds (RAM embeds its location because a sampled location carries noise the
core does not know); the paper's encoder, too, takes the read and a state, never the attention parameters.

The filterbank is built in float32 even under `trainer.precision=bf16` (bfloat16 cannot tell pixel 99 from
99.5); the read's two products and the networks' follow autocast. The model is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.data import unit
from glimpse.models.common import Episode
from glimpse.models.ram import ActionNetwork, CoreNetwork

EPS = 1e-8  # the least Z_X, Z_Y: a filter whose whole mass lies outside the image reads zeros
# Unnormalised weights below exp(-CUT), beyond 8 sigma of a filter's centre, are 0: Gaussian tails would otherwise be
# subnormal floats, which CPUs multiply slowly, in the read's products and their backward. exp(-CUT) / EPS is small,
# so the weights dropped stay negligible even where Z_X is held at EPS.
CUT = 32.0


CENTRES = ("linear", "tanh")


def attention_parameters(params: Tensor, height: int, width: int, n: int,
                         centre: str = "linear") -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The grid from the attention map's outputs (..., 5) = (g~X, g~Y, log sigma^2, log delta~, log gamma);
    `centre`: "linear", the paper's map of g~ to the centre, or "tanh", g~ squashed into (-1, 1) first.

    Returns the centre (g_X, g_Y) (..., 2) in the paper's pixels (pixel a at a, counted from 1), the stride
    delta (...) and the standard deviation sigma (...) in pixels, and the intensity gamma (...).
    """
    gx, gy, log_variance, log_delta, log_gamma = params.unbind(-1)
    if centre == "tanh":
        gx, gy = torch.tanh(gx), torch.tanh(gy)
    g = torch.stack(((width + 1) / 2 * (gx + 1), (height + 1) / 2 * (gy + 1)), -1)
    # N = 1 has no stride to set: its one filter sits at g whatever delta is
    delta = (max(height, width) - 1) / max(n - 1, 1) * torch.exp(log_delta)
    return g, delta, torch.exp(log_variance / 2), torch.exp(log_gamma)


def locations_of(centres: Tensor, height: int, width: int) -> Tensor:
    """Grid centres (g_X, g_Y) (..., 2) in the paper's pixels as the project's locations (x, y) in [-1, 1]^2."""
    return (2 * centres - 1) / centres.new_tensor([width, height]) - 1


def centres_of(locations: Tensor, height: int, width: int) -> Tensor:
    """`locations_of`'s inverse: locations (x, y) (..., 2) as grid centres (g_X, g_Y) in the paper's pixels."""
    return ((locations + 1) * locations.new_tensor([width, height]) + 1) / 2


def filterbank(centres: Tensor, strides: Tensor, sigmas: Tensor, n: int, height: int, width: int,
               eps: float = EPS) -> tuple[Tensor, Tensor]:
    """F_X (..., N, W) and F_Y (..., N, H): the N x N grid's Gaussian filters along x and y, each summing to 1 over
    the image's columns (rows), or to 0 where its mass lies outside the image; weights below exp(-CUT) before
    normalisation are 0.

    `centres` (..., 2) as `attention_parameters` gives them, `strides` and `sigmas` (...) in pixels.
    """
    offsets = torch.arange(1, n + 1, dtype=centres.dtype, device=centres.device) - n / 2 - 0.5  # i - N/2 - 0.5
    mu = centres.unsqueeze(-2) + offsets[:, None] * strides[..., None, None]  # (..., N, 2): (mu_X^i, mu_Y^i)
    scale = (-0.5 / sigmas**2)[..., None, None]  # -1 / (2 sigma^2)

    def along(mu_axis: Tensor, size: int) -> Tensor:
        d = torch.arange(1, size + 1, dtype=centres.dtype, device=centres.device) - mu_axis[..., None]
        exponent = d * d * scale
        # clamped first, so that exp never makes the subnormals it would then drop
        f = torch.exp(exponent.clamp_min(-CUT)).masked_fill(exponent < -CUT, 0)
        return f * (1 / f.sum(-1, keepdim=True).clamp_min(eps))

    return along(mu[..., 0], width), along(mu[..., 1], height)


def read(images: Tensor, f_x: Tensor, f_y: Tensor, gammas: Tensor) -> Tensor:
    """gamma F_Y x F_X^T for every channel: images (B, C, H, W), F_X (B, N, W), F_Y (B, N, H), gamma (B,) ->
    (B, C, N, N), row j read by F_Y's filter j, column i by F_X's filter i."""
    rows = f_y.unsqueeze(1) @ images  # (B, C, N, W)
    return (rows @ f_x.unsqueeze(1).transpose(-1, -2)) * gammas[:, None, None, None]


class ReadNetwork(nn.Module):
    """Glimpse network: g_t = ReLU(Linear(r_t)), the N x N x C read flattened."""

    def __init__(self, in_features: int, out: int = 256):
        super().__init__()
        self.fc = nn.Linear(in_features, out)

    def forward(self, reads: Tensor) -> Tensor:
        """g_t (B, out) from the read r_t (B, C, N, N)."""
        return F.relu(self.fc(reads.flatten(1)))


class DRAW(nn.Module):
    """DRAW's read attention, glimpse, core and action networks: a classifier trained by backpropagation alone.

    Episode: the logits, the grid centres as `locations` (B, T, 2), and per step the stride, sigma and gamma
    (B, T) and the read (B, T, C, N, N) (`strides`, `sigmas`, `gammas`, `reads`), for the pictures and the
    pixel count (glimpse.accounting.filterbank_pixels_read).
    """

    stochastic = False

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        classes: int = 10,
        glimpses: int = 6,
        patch: int = 8,
        glimpse_out: int = 256,
        hidden: int = 256,
        core: str = "lstm",
        dropout: float = 0.0,
        centre: str = "linear",
    ):
        super().__init__()
        channels = image_shape[0]
        self.image_shape, self.glimpses, self.patch, self.centre = tuple(image_shape), glimpses, patch, centre
        self.attention = nn.Linear(hidden, 5)  # (g~X, g~Y, log sigma^2, log delta~, log gamma) from h_{t-1}
        # The first read (from the bias alone) spans the whole image, its filters as wide as half their spacing:
        # it then sees the image as a blurred N x N thumbnail. With PyTorch's default bias (sigma ~ 1 pixel) it
        # would sample N x N isolated pixels of a canvas, almost all background.
        height, width = image_shape[-2:]
        spacing = (max(height, width) - 1) / max(patch - 1, 1)
        with torch.no_grad():
            self.attention.bias.copy_(torch.tensor([0.0, 0.0, 2 * math.log(max(spacing / 2, 0.5)), 0.0, 0.0]))
        self.glimpse_net = ReadNetwork(channels * patch * patch, glimpse_out)
        self.core = CoreNetwork(core, glimpse_out, hidden)
        self.dropout = nn.Dropout(dropout)  # on h_T before the action network, in training only
        self.action_net = ActionNetwork(hidden, classes)

    @classmethod
    def from_config(cls, cfg, image_shape: tuple[int, int, int], classes: int) -> DRAW:
        m = cfg.model
        return cls(image_shape, classes, glimpses=m.glimpses, patch=cfg.sensor.patch, glimpse_out=m.glimpse_out,
                   hidden=m.hidden, core=m.core, dropout=m.get("dropout", 0.0),
                   centre=m.get("centre", "linear"))

    def filters(self, params: Tensor, height: int, width: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The grid of the attention map's outputs (B, 5) on an H x W image: centres (B, 2), strides, sigmas,
        gammas (B,), F_X (B, N, W), F_Y (B, N, H); in float32 (float64 stays), outside autocast."""
        with torch.autocast(params.device.type, enabled=False):
            params = params.float() if params.dtype in (torch.float16, torch.bfloat16) else params
            centres, strides, sigmas, gammas = attention_parameters(params, height, width, self.patch, self.centre)
            f_x, f_y = filterbank(centres, strides, sigmas, self.patch, height, width)
        return centres, strides, sigmas, gammas, f_x, f_y

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        """One episode on `images` (B, C, H, W), uint8 or float; `greedy` and `generator` are unused (nothing is
        drawn at random)."""
        b, (height, width) = images.shape[0], images.shape[-2:]
        kind = images.device.type
        # in the products' dtype once, not at each step: autocast's, else the weights' (float64 for gradcheck)
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.attention.weight.dtype
        images = unit(images).to(dtype)
        h, state = None, None
        centres, strides, sigmas, gammas, reads = [], [], [], [], []
        for _ in range(self.glimpses):
            params = self.attention(h) if h is not None else self.attention.bias.expand(b, -1)  # h_0 = 0
            centre, stride, sigma, gamma, f_x, f_y = self.filters(params, height, width)
            r = read(images, f_x, f_y, gamma)
            h, state = self.core(self.glimpse_net(r), state)
            for kept, value in zip((centres, strides, sigmas, gammas, reads), (centre, stride, sigma, gamma, r)):
                kept.append(value)
        return Episode(
            self.action_net(self.dropout(h)), locations_of(torch.stack(centres, 1), height, width),
            strides=torch.stack(strides, 1),
            sigmas=torch.stack(sigmas, 1), gammas=torch.stack(gammas, 1), reads=torch.stack(reads, 1),
        )
