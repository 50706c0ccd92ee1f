"""Evaluation's measure of looking, glimpses whose centre lands on the target's box against the chance of random
glimpses, and the single-run error; on a tiny real run, the figures in metrics.json, history.jsonl, TensorBoard,
`python -m glimpse.evaluate` and the pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn

from glimpse.data import ink_boxes, place_on_canvas, seeded
from glimpse.evaluate import evaluate_model, main, on_target, on_target_chance
from glimpse.models import build_model
from glimpse.models.common import Episode
from glimpse.train import train
from glimpse.visual import TARGET
from glimpse.visualize import write_pictures
from tests.conftest import make_cfg, needs_mnist

H = W = 60
LOOKING = ("on_target", "on_target_greedy", "on_target_chance")


def location_of(row: float, column: float) -> list[float]:
    """The location whose centre is the middle of pixel (row, column) of an H x W image."""
    return [2 * (column + 0.5) / W - 1, 2 * (row + 0.5) / H - 1]


def canvases(n: int = 16, position: tuple[int, int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Blobs of ink, each at most 28 x 28, put on H x W canvases as the data layer puts digits: (canvases, labels,
    target boxes)."""
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)
    for image in images:
        top, left = torch.randint(0, 20, (2,), generator=g).tolist()
        image[0, top : top + 8, left : left + 5] = 255
    canvas, corner = place_on_canvas(images, H, 0, images, seeded(1), position=position)
    return canvas, torch.randint(0, 10, (n,), generator=g), ink_boxes(images) + corner.repeat(1, 2)


class Stare(nn.Module):
    """A stand-in policy: glimpse 1 in the top-left corner, glimpses 2 .. T at the centre of the image's ink
    (`at="ink"`) or in the bottom-right corner (`at="corner"`); its logits are random draws from the generator in
    sampled runs, zeros in greedy ones."""

    stochastic = True

    def __init__(self, glimpses: int = 4, at: str = "ink"):
        super().__init__()
        self.glimpses, self.at = glimpses, at

    def forward(self, images: Tensor, greedy: bool = False, generator: torch.Generator | None = None) -> Episode:
        b = len(images)
        if self.at == "ink":
            top, left, bottom, right = ink_boxes(images).double().unbind(1)
            centre = torch.stack([(left + right) / W - 1, (top + bottom) / H - 1], 1).float()
        else:
            centre = torch.tensor([location_of(H - 1, W - 1)]).expand(b, 2)
        locations = torch.cat([torch.full((b, 1, 2), -1.0), centre[:, None].expand(b, self.glimpses - 1, 2)], 1)
        logits = torch.zeros(b, 10) if greedy else torch.randn(b, 10, generator=generator)
        return Episode(logits, locations)


def test_a_glimpse_is_on_target_when_its_centre_pixel_is_in_the_box():
    boxes = torch.tensor([[10, 20, 30, 35]])  # rows 10 .. 29, columns 20 .. 34
    inside = [location_of(20, 27), location_of(10, 20), location_of(29, 34)]
    outside = [location_of(30, 27), location_of(20, 35), location_of(9, 20), location_of(20, 19), [-1, -1], [1, 1]]
    assert on_target(torch.tensor([inside + outside]), boxes, H, W).tolist() == [[True] * 3 + [False] * 6]


def test_chance_is_the_boxs_share_of_the_image_as_uniform_glimpses_find():
    boxes = torch.tensor([[10, 20, 30, 35], [0, 0, 60, 60], [5, 5, 5, 9]])  # the last is empty
    assert on_target_chance(boxes, H, W).tolist() == pytest.approx([20 * 15 / (H * W), 1.0, 0.0])
    uniform = torch.rand(3, 100_000, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    found = on_target(uniform, boxes, H, W).double().mean(1)
    assert found.tolist() == pytest.approx(on_target_chance(boxes, H, W).tolist(), abs=0.005)


def test_staring_at_the_ink_is_on_target_and_the_first_glimpse_does_not_count():
    images, labels, boxes = canvases()
    result = evaluate_model(Stare(at="ink"), [(images, labels)], samples=3, boxes=boxes)
    assert result["on_target"] == result["on_target_greedy"] == 100.0  # glimpse 1, in the corner, would make it 75
    assert result["on_target_chance"] == pytest.approx(100.0 * 8 * 5 / (H * W))  # every box is 8 x 5 pixels
    away = evaluate_model(Stare(at="corner"), [(images, labels)], samples=3, boxes=boxes)
    assert away["on_target"] == away["on_target_greedy"] == 0.0
    assert away["on_target_chance"] == result["on_target_chance"]


def test_the_single_run_error_is_the_first_sampled_runs_and_boxes_change_no_draw():
    images, labels, boxes = canvases(64)
    labels[:32] = torch.randn(32, 10, generator=torch.Generator().manual_seed(5)).argmax(1)  # Stare's first run's
    batches = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    one = evaluate_model(Stare(), batches[:1], samples=1, generator=torch.Generator().manual_seed(5))
    three = evaluate_model(Stare(), batches[:1], samples=3, generator=torch.Generator().manual_seed(5))
    assert one["error_single"] == one["error"] == three["error_single"] == 0.0 < three["error"]
    plain = evaluate_model(Stare(), batches, samples=3, generator=torch.Generator().manual_seed(5))
    boxed = evaluate_model(Stare(), batches, samples=3, generator=torch.Generator().manual_seed(5), boxes=boxes)
    assert {k: boxed[k] for k in plain} == plain and not set(LOOKING) & set(plain)


@pytest.mark.parametrize("model", ["ram", "dram", "soft", "cnn"])
def test_only_models_that_move_their_glimpses_are_measured(model):
    images, labels, boxes = canvases(8)
    cfg = make_cfg("experiment=ram_translated60", f"model={model}", "sensor=canvas60")
    result = evaluate_model(build_model(cfg, (1, H, W), 10), [(images, labels)], 2, torch.Generator().manual_seed(0),
                            boxes=boxes)
    assert set(LOOKING) <= set(result) if model in ("ram", "dram") else not set(LOOKING) & set(result)
    if model != "ram":  # one deterministic run: the single run is the greedy run, and so is its looking
        assert result["error_single"] == result["error"] == result["error_greedy"]
        assert result.get("on_target") == result.get("on_target_greedy")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cfg = make_cfg("experiment=ram_cluttered60", "model.glimpses=4", "data.train_limit=256", "data.eval_limit=100",
                   "trainer.epochs=1", "trainer.batch_size=64", "trainer.eval_samples=2", "trainer.visual_images=3")
    return run_dir, train(cfg, run_dir)


@needs_mnist
def test_a_run_reports_how_often_it_looks_at_the_target(tiny_run, capsys):
    run_dir, metrics = tiny_run
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test_error_single", *LOOKING):
        assert 0.0 <= on_disk[key] <= 100.0, key
    assert 0.0 < on_disk["on_target_chance"] < 25.0  # a digit's ink covers a few % of a 60 x 60 canvas
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    tags = set(EventAccumulator(str(run_dir)).Reload().Tags()["scalars"])
    for key in ("error_single", *LOOKING):
        assert f"val/{key}" in history[0] and f"val/{key}" in tags, key
    assert main([str(run_dir)]) == 0
    again = json.loads(capsys.readouterr().out)  # re-scored: the same figures under the same names
    assert {k: again[k] for k in ("test_error", "test_error_single", *LOOKING)} == {
        k: on_disk[k] for k in ("test_error", "test_error_single", *LOOKING)}


@needs_mnist
def test_the_trajectories_show_the_target_box(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    written = write_pictures(run_dir, tmp_path, images=3)
    picture = np.asarray(Image.open(tmp_path / "0_trajectory.png").convert("RGB"))
    assert (picture == TARGET).all(-1).sum() > 50 and tmp_path / "0_episode.gif" in written
