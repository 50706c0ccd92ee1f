"""DRAW's read attention as a classifier (model=draw): the filterbank against the paper's equations written out
per sample and per filter, its gradients, bf16, the accounting, the pictures and a short training run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glimpse.accounting import FILTER_WEIGHT, episode_pixels_read, filterbank_pixels_read, macs_per_image, params
from glimpse.config import compose_config
from glimpse.errors import ConfigError
from glimpse.evaluate import evaluate_model
from glimpse.models import build_model
from glimpse.models.draw import CENTRES, CUT, DRAW, attention_parameters, centres_of, filterbank, locations_of, read
from glimpse.sensor import crop, patch_origins
from glimpse.visual import draw_trajectories, filterbank_boxes, glimpse_boxes, pictures
from tests.conftest import make_cfg, needs_mnist

EPS = 1e-8


def reference_read(image: list, p: list[float], n: int, cut: float | None = CUT) -> tuple[list, tuple[float, float]]:
    """The paper's section 3.2 for one image (C x H x W nested lists) and one set of the five parameters, pixel
    by pixel and filter by filter: the read (C x N x N, row j by F_Y's filter j) and the grid's centre (x, y).
    Unnormalised weights below exp(-cut) are 0 (None: the paper's formula as it stands)."""
    gx_, gy_, log_variance, log_delta, log_gamma = p
    big_a, big_b = len(image[0][0]), len(image[0])  # A columns, B rows
    g_x, g_y = (big_a + 1) / 2 * (gx_ + 1), (big_b + 1) / 2 * (gy_ + 1)
    delta = (max(big_a, big_b) - 1) / (n - 1) * math.exp(log_delta)
    variance, gamma = math.exp(log_variance), math.exp(log_gamma)

    def bank(g: float, size: int) -> list[list[float]]:
        rows = []
        for i in range(1, n + 1):
            mu = g + (i - n / 2 - 0.5) * delta
            exponents = [-((a - mu) ** 2) / (2 * variance) for a in range(1, size + 1)]
            weights = [0.0 if cut is not None and e < -cut else math.exp(e) for e in exponents]
            z = max(sum(weights), EPS)
            rows.append([w / z for w in weights])
        return rows

    f_x, f_y = bank(g_x, big_a), bank(g_y, big_b)
    out = [[[gamma * sum(f_y[j][b] * channel[b][a] * f_x[i][a] for b in range(big_b) for a in range(big_a))
             for i in range(n)] for j in range(n)] for channel in image]
    # pixel a (from 1) covers [a - 1, a): the centre g_X lies at u = g_X - 1/2, x = 2u / A - 1
    return out, ((2 * g_x - 1) / big_a - 1, (2 * g_y - 1) / big_b - 1)


# (g~X, g~Y, log sigma^2, log delta~, log gamma): inside; past the right and top borders; a wide blur over the
# whole image; a sharp grid far outside (every filter's mass off the image: it reads zeros).
PARAMS = [[0.1, -0.2, 0.0, -1.0, 0.3], [1.3, -1.25, -0.5, -0.4, -0.2], [-0.4, 0.6, 3.0, 0.5, 0.0],
          [6.0, -0.3, -3.0, -2.0, 0.1]]


@pytest.mark.parametrize("n", [3, 4])
def test_the_read_is_the_papers_filterbank_on_non_square_images_with_several_channels(n):
    height, width, channels = 7, 11, 3
    g = torch.Generator().manual_seed(0)
    images = torch.rand(len(PARAMS), channels, height, width, generator=g, dtype=torch.float64)
    p = torch.tensor(PARAMS, dtype=torch.float64)
    centres, strides, sigmas, gammas = attention_parameters(p, height, width, n)
    f_x, f_y = filterbank(centres, strides, sigmas, n, height, width)
    assert f_x.shape == (4, n, width) and f_y.shape == (4, n, height)
    got = read(images, f_x, f_y, gammas)
    assert got.shape == (4, channels, n, n)
    for k, params_k in enumerate(PARAMS):
        expected, location = reference_read(images[k].tolist(), params_k, n)
        torch.testing.assert_close(got[k], torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        # the weights cut off, beyond 8 sigma, change the read by next to nothing, even where Z_X is held at EPS
        paper, _ = reference_read(images[k].tolist(), params_k, n, cut=None)
        torch.testing.assert_close(got[k], torch.tensor(paper, dtype=torch.float64), rtol=0, atol=1e-5)
        torch.testing.assert_close(locations_of(centres[k], height, width), torch.tensor(location, dtype=torch.float64))
    assert got[3].abs().max() == 0  # the grid far outside reads nothing
    # a filter with its mass on the image sums to 1 over it (past the border, Z_X >= EPS may leave it less)
    torch.testing.assert_close(f_x[[0, 2]].sum(-1), torch.ones(2, n, dtype=torch.float64))


def test_a_tanh_centre_keeps_the_grid_on_the_image_and_starts_like_the_papers():
    height, width, n = 7, 11, 3
    far = torch.tensor([[6.0, -9.0, 0.0, 0.0, 0.0], [-40.0, 40.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    paper, _, _, _ = attention_parameters(far, height, width, n)
    squashed, _, _, _ = attention_parameters(far, height, width, n, centre="tanh")
    assert (paper[:, 0] > width + 1).any() and (paper[:, 1] < 0).any()  # the paper's centre leaves the image
    locations = locations_of(squashed, height, width)
    assert (locations.abs() <= 1 + 1 / min(height, width)).all()  # within half a pixel of the image
    near = torch.tensor([[1e-4, -2e-4, 0.3, -0.5, 0.1]], dtype=torch.float64)
    linear, tanh = (attention_parameters(near, height, width, n, centre) for centre in CENTRES)
    for a, b in zip(linear, tanh):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)


def test_the_first_read_comes_from_the_zero_state_and_the_episode_keeps_every_steps_grid():
    """h_0 = 0: the first grid is the attention map's bias, the same for every image (uint8 or float)."""
    torch.manual_seed(0)
    model = DRAW((2, 9, 13), classes=4, glimpses=3, patch=4, glimpse_out=16, hidden=8).double()
    images = (torch.rand(2, 2, 9, 13) * 255).to(torch.uint8)
    episode = model(images)
    assert episode.logits.shape == (2, 4) and episode.locations.shape == (2, 3, 2)
    assert episode.strides.shape == episode.sigmas.shape == episode.gammas.shape == (2, 3)
    assert episode.reads.shape == (2, 3, 2, 4, 4)
    bias = model.attention.bias.detach().tolist()
    for k in range(2):
        expected, location = reference_read((images[k].double() / 255).tolist(), bias, 4)
        torch.testing.assert_close(episode.reads[k, 0], torch.tensor(expected, dtype=torch.float64))
        torch.testing.assert_close(episode.locations[k, 0], torch.tensor(location, dtype=torch.float64))
    assert not torch.equal(episode.locations[:, 1], episode.locations[:, 0])  # later grids follow the state
    assert not model.stochastic and episode.log_pi is None  # cross-entropy alone trains it


@pytest.mark.parametrize("centre", ["linear", "tanh"])
def test_the_read_has_the_gradient_of_its_five_parameters_and_of_the_image(centre):
    height, width, n = 5, 6, 3
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 2, height, width, generator=g, dtype=torch.float64, requires_grad=True)
    p = torch.tensor([[0.2, -0.3, -0.2, -0.3, 0.1], [0.9, 0.4, 0.5, 0.2, -0.4]], dtype=torch.float64,
                     requires_grad=True)

    def reading(images: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        centres, strides, sigmas, gammas = attention_parameters(p, height, width, n, centre)
        return read(images, *filterbank(centres, strides, sigmas, n, height, width), gammas)

    assert torch.autograd.gradcheck(reading, (images, p))


def test_the_classification_loss_teaches_where_and_how_wide_to_look():
    """Cross-entropy alone reaches the attention map's weights and every one of its five outputs."""
    torch.manual_seed(0)
    model = DRAW((1, 28, 28), glimpses=3)
    logits = model(torch.rand(8, 1, 28, 28)).logits
    torch.nn.functional.cross_entropy(logits, torch.arange(8)).backward()
    assert (model.attention.weight.grad.abs().sum(1) > 0).all()  # g~X, g~Y, log sigma^2, log delta~, log gamma


def test_a_forward_and_backward_under_bf16_autocast_keeps_float32_weights_and_gradients():
    cfg = make_cfg("experiment=draw_cluttered60")
    torch.manual_seed(0)
    model = build_model(cfg, (1, 60, 60), 10)
    images, labels = (torch.rand(16, 1, 60, 60) * 255).to(torch.uint8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        full = model(images).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        episode = model(images)
        loss = torch.nn.functional.cross_entropy(episode.logits, labels)
    loss.backward()
    assert episode.logits.dtype == torch.bfloat16 and torch.isfinite(loss)
    assert episode.strides.dtype == torch.float32  # the grid is built in float32 whatever autocast does
    for p in model.parameters():
        assert p.dtype == p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
    torch.testing.assert_close(episode.logits.float(), full, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("core", ["lstm", "gru", "rnn"])
def test_every_core_runs_and_the_preset_uses_the_papers_lstm(core):
    cfg = make_cfg("experiment=draw_mnist", f"model.core={core}")
    model = build_model(cfg, (1, 28, 28), 10)
    assert model(torch.rand(2, 1, 28, 28)).logits.shape == (2, 10)
    assert make_cfg("experiment=draw_mnist").model.core == "lstm"


def test_dropout_on_the_last_state_acts_in_training_and_not_in_evaluation():
    model = build_model(make_cfg("experiment=draw_mnist", "model.dropout=0.5"), (1, 28, 28), 10)
    images = torch.rand(4, 1, 28, 28)
    torch.manual_seed(0)
    assert not torch.equal(model(images).logits, model(images).logits)
    model.eval()
    assert torch.equal(model(images).logits, model(images).logits)


@pytest.mark.parametrize("preset, glimpses, n, shape, lr", [
    ("draw_mnist", 6, 8, (1, 28, 28), 3e-4), ("draw_translated60", 8, 12, (1, 60, 60), 3e-4),
    ("draw_cluttered60", 8, 12, (1, 60, 60), 3e-4), ("draw_cluttered100", 8, 12, (1, 100, 100), 1e-4),
    ("draw_cluttered_fashion60", 8, 12, (1, 60, 60), 3e-4),
])
def test_the_presets_read_n_by_n_as_often_as_ram_glimpses(preset, glimpses, n, shape, lr):
    """T and N are the RAM preset's glimpses and patch on the same data (N is the sensor's patch); Adam at
    trainer=draw's 3e-4, or lower where the grid ran off the canvas at that rate; the paper's grid centre."""
    cfg = compose_config([f"experiment={preset}"])
    ram = compose_config([f"experiment={preset.replace('draw_', 'ram_')}"])
    assert (cfg.model.glimpses, cfg.sensor.patch) == (ram.model.glimpses, ram.sensor.patch) == (glimpses, n)
    assert cfg.data == ram.data and cfg.trainer.lr == lr and cfg.model.centre == "linear"
    episode = build_model(cfg, shape, 10)(torch.rand(1, *shape))
    assert episode.reads.shape == (1, glimpses, 1, n, n)


@pytest.mark.parametrize("override, message", [
    ("model.glimpses=0", "model.glimpses=0; allowed: a positive integer"),
    ("model.glimpse_out=-2", "model.glimpse_out=-2; allowed: a positive integer"),
    ("model.hidden=0", "model.hidden=0; allowed: a positive integer"),
    ("model.core=conv", "model.core='conv'; allowed: rnn, lstm, gru"),
    ("sensor.patch=0", "sensor.patch=0; allowed: a positive integer"),
    ("model.dropout=1", "model.dropout=1; allowed: a number in \\[0, 1\\)"),
    ("model.centre=sigmoid", "model.centre='sigmoid'; allowed: linear, tanh"),
])
def test_each_draw_key_is_checked_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        compose_config(["model=draw", override])


# ---------------------------------------------------------------- accounting


def test_macs_count_the_reads_products_and_the_networks():
    c, h, w, n, t, out, hidden, classes = 2, 20, 30, 5, 3, 16, 12, 10
    model = DRAW((c, h, w), classes, glimpses=t, patch=n, glimpse_out=out, hidden=hidden)
    step = c * n * h * w + c * n * w * n + n * n * c * out + 4 * hidden * (out + hidden)  # F_Y x, (F_Y x) F_X^T
    # the first grid is the attention map's bias (h_0 = 0): T - 1 products with the state
    assert macs_per_image(model, torch.rand(4, c, h, w)) == t * step + (t - 1) * hidden * 5 + hidden * classes
    assert params(model) == sum(p.numel() for p in model.parameters())


def sharp_grid(model: DRAW, height: int, width: int, log_gamma: float = 0.0) -> None:
    """Every step reads the same N x N grid at the image's centre, filters 1 pixel apart and 0.2 pixels wide."""
    n = model.patch
    with torch.no_grad():
        model.attention.weight.zero_()
        model.attention.bias.copy_(torch.tensor([0.0, 0.0, math.log(0.04), math.log((n - 1) / (max(height, width) - 1)),
                                                 log_gamma]))


def test_a_sharp_grid_one_pixel_apart_reads_the_sensors_patch_and_counts_its_pixels():
    """At delta = 1 and a small sigma the N x N read is the N x N patch the sensor crops at the same location."""
    model = DRAW((1, 28, 28), glimpses=2)
    sharp_grid(model, 28, 28, log_gamma=math.log(2.0))
    images = torch.rand(3, 1, 28, 28)
    episode = model(images)
    torch.testing.assert_close(episode.locations, torch.zeros(3, 2, 2))
    # sigma 0.2: a neighbouring pixel weighs exp(-12.5) of the centre's
    torch.testing.assert_close(episode.reads[:, 0, 0] / 2, crop(images, episode.locations[:, 0].detach(), 8)[:, 0],
                               atol=1e-4, rtol=0)
    assert filterbank_pixels_read(episode.locations, episode.strides, episode.sigmas, 8, 28, 28).tolist() == [64] * 3
    assert episode_pixels_read(episode, [], 28, 28).tolist() == [64] * 3


def test_pixels_read_are_those_some_filter_pair_weighs_above_the_threshold():
    """Against every filter pair of every step, one at a time; non-square, grids past the borders."""
    height, width, n = 9, 14, 3
    p = torch.tensor([[[0.1, -0.2, 0.0, -1.0, 0.3], [1.3, -1.25, -0.5, -0.4, -0.2]],
                      [[-0.4, 0.6, 1.0, 0.5, 0.0], [6.0, -0.3, -3.0, -2.0, 0.1]]], dtype=torch.float64)
    centres, strides, sigmas, _ = attention_parameters(p, height, width, n)
    locations = locations_of(centres, height, width)
    torch.testing.assert_close(centres_of(locations, height, width), centres)
    f_x, f_y = filterbank(centres, strides, sigmas, n, height, width)
    for image in range(2):
        seen = set()
        for step in range(2):
            for i in range(n):
                for j in range(n):
                    weights = f_y[image, step, j][:, None] * f_x[image, step, i][None, :]
                    seen |= {tuple(rc) for rc in (weights > FILTER_WEIGHT).nonzero().tolist()}
        got = filterbank_pixels_read(locations[image:image + 1], strides[image:image + 1], sigmas[image:image + 1],
                                     n, height, width)
        assert got.tolist() == [len(seen)] and 0 < len(seen) < height * width


def test_evaluation_counts_the_pixels_a_filterbank_reads():
    model = DRAW((1, 28, 28), glimpses=2)
    sharp_grid(model, 28, 28)
    result = evaluate_model(model, [(torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))], count_pixels=True)
    assert result["pixels_per_image"] == 64


def test_on_canvases_evaluation_says_how_often_the_grid_centre_is_on_target():
    """draw moves its grids: the centre plays the part of a glimpse's location (`on_target`)."""
    model = build_model(make_cfg("experiment=draw_translated60"), (1, 60, 60), 10)
    boxes = torch.tensor([[10, 10, 30, 30], [0, 0, 60, 60]])  # the second covers the whole canvas
    result = evaluate_model(model, [(torch.rand(2, 1, 60, 60), torch.tensor([1, 2]))], boxes=boxes)
    assert 50.0 <= result["on_target_greedy"] <= 100.0 and result["on_target"] == result["on_target_greedy"]


# ---------------------------------------------------------------- pictures


def test_a_grid_is_drawn_as_its_extent_and_centre_like_the_sensors_patch_at_one_pixel_apart():
    """The grid's rectangle is N cells of side delta around its centre: at delta = 1 the sensor's patch there."""
    locations, strides = torch.tensor([[[0.2, -0.5], [-1.0, 1.0]]]), torch.tensor([[1.0, 2.5]])
    boxes = filterbank_boxes(locations, strides, 8, 20, 30)
    assert boxes.shape == (1, 2, 1, 4)
    torch.testing.assert_close(boxes[0, 0], glimpse_boxes(locations[0, :1], [8], 20, 30, snap=False)[0])
    assert boxes[0, 1, 0].tolist() == [-10.0, 10.0, 10.0, 30.0]  # the bottom-left corner, 8 x 2.5 pixels wide
    # at the centre the grid's cells are whole pixels: the very pixels of the sensor's patch
    x0, y0 = patch_origins(torch.zeros(1, 2), 8, 20, 30)[0].tolist()
    sharp = filterbank_boxes(torch.zeros(1, 1, 2), torch.ones(1, 1), 8, 20, 30)[0, 0, 0].tolist()
    assert sharp == [x0, y0, x0 + 8, y0 + 8] == [11, 6, 19, 14]


def test_draw_pictures_are_rams_pictures_of_its_grids_and_reads(tmp_path):
    """Trajectories, patches and frames under RAM's names: a sharp grid at the centre is drawn as RAM's 8 x 8 patch
    at the centre, and its patches picture shows the read without gamma."""
    from torch.utils.tensorboard import SummaryWriter

    from glimpse.visual import log_pictures, patch_grid

    model = build_model(make_cfg("experiment=draw_mnist"), (1, 28, 28), 10)
    sharp_grid(model, 28, 28, log_gamma=math.log(3.0))
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([3, 4])
    drawn = pictures(model, images, labels)
    assert set(drawn) == {"trajectory", "patches", "frames"}
    predictions = model(images).logits.argmax(1)
    ram_like = draw_trajectories(images, torch.zeros(2, 6, 2), [8], labels, predictions)
    assert torch.equal(drawn["trajectory"], ram_like)
    reads = model(images).reads / 3
    assert torch.equal(drawn["patches"], patch_grid(reads.unsqueeze(2)))
    assert drawn["frames"].shape[:2] == (2, 6)
    with SummaryWriter(str(tmp_path)) as writer:
        log_pictures(writer, model, images, labels, step=1)
    tags = set(EventAccumulator(str(tmp_path)).Reload().Tags()["images"])
    assert tags == {"visual/trajectories", "visual/patches", "visual/episodes"}


# ---------------------------------------------------------------- a short run


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    from glimpse.train import train

    run_dir = tmp_path_factory.mktemp("draw")
    cfg = make_cfg("experiment=draw_mnist", "data.train_limit=1024", "data.eval_limit=256", "trainer.epochs=1",
                   "trainer.batch_size=64", "trainer.visual_images=3", "device=cpu")
    return run_dir, train(cfg, run_dir)


@needs_mnist
def test_a_short_run_writes_the_accounting_and_the_pictures(short_run):
    run_dir, metrics = short_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["model"] == "draw" and on_disk["glimpses"] == 6 and 0 <= on_disk["test_error"] <= 100
    assert on_disk["test_error"] == on_disk["test_error_greedy"] == on_disk["test_error_single"]
    assert on_disk["params"] > 5e5 and on_disk["macs_per_image"] > 3e6
    assert 0 <= on_disk["pixels_per_image"] <= 28 * 28
    pictures_logged = [t for t in EventAccumulator(str(run_dir)).Reload().Tags()["images"] if t.startswith("visual/")]
    assert set(pictures_logged) == {"visual/trajectories", "visual/patches", "visual/episodes"}


@needs_mnist
def test_visualize_draws_a_draw_run(short_run, tmp_path):
    from glimpse.visualize import write_pictures

    run_dir, _ = short_run
    written = {p.name for p in write_pictures(run_dir, tmp_path, images=2)}
    assert written == {"0_trajectory.png", "1_trajectory.png", "0_patches.png", "1_patches.png", "0_episode.gif",
                       "1_episode.gif", "trajectories.png"}


# ---------------------------------------------------------------- the comparison


@pytest.mark.parametrize("models, columns", [
    (("ram", "dram", "draw", "soft"), ["ram", "RAM (paper)", "dram", "draw", "DRAW (paper)", "soft"]),
    (("ram", "dram", "soft"), ["ram", "RAM (paper)", "dram", "DRAW (paper)", "soft"]),  # tables made before draw
])
def test_the_comparison_puts_the_draw_papers_figure_beside_draw(models, columns, tmp_path, monkeypatch):
    from glimpse import compare
    from tests.test_compare import make_run, table_rows

    for model in models:
        make_run(tmp_path / "runs" / model, model, "cluttered_mnist100", 0, 5.0, 8)
    monkeypatch.setattr(compare, "plot_all", lambda *args, **kwargs: list(compare.FIGURES))  # the table only
    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "cmp"), "--paper"]) == 0
    row = table_rows((tmp_path / "cmp" / "table.md").read_text())["cluttered_mnist100"]
    assert list(row) == ["data set", *columns] and row["DRAW (paper)"] == "3.36"


# ---------------------------------------------------------------- CUDA (skipped without a device)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_on_cuda_draw_computes_what_it_computes_on_the_cpu_and_trains_in_bf16(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # the comparison is about the code
    torch.manual_seed(0)
    model = build_model(make_cfg("experiment=draw_cluttered60"), (1, 60, 60), 10)
    images, labels = (torch.rand(16, 1, 60, 60) * 255).to(torch.uint8), torch.randint(0, 10, (16,))
    with torch.no_grad():
        cpu = model(images)
        gpu = model.to("cuda")(images.to("cuda"))
    for name in ("logits", "locations", "strides", "sigmas", "gammas", "reads"):
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), atol=1e-4, rtol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images.to("cuda")).logits, labels.to("cuda"))
    loss.backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in model.parameters())


def test_an_untrained_models_first_read_is_a_blurred_thumbnail_of_the_whole_image():
    model = DRAW((1, 60, 60), glimpses=1, patch=12)
    episode = model(torch.rand(2, 1, 60, 60))
    spacing = 59 / 11  # the stride at delta~ = 1: the grid spans the image
    assert torch.allclose(episode.strides[:, 0], torch.tensor(spacing))
    assert torch.allclose(episode.sigmas[:, 0], torch.tensor(spacing / 2))
    assert torch.allclose(episode.locations[:, 0], torch.zeros(2, 2), atol=1e-6)  # at the centre
