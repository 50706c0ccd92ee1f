"""Pictures of where the models look: geometry against the sensor, TensorBoard entries, the tensorboard server, the
CLI."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter

from glimpse import visual
from glimpse.config import RESULT_NEUTRAL_KEYS
from glimpse.data import GlimpseData
from glimpse.models import build_model
from glimpse.models.soft import grid_locations
from glimpse.sensor import crop, patch_sides
from glimpse.visual import (
    BAND,
    PALETTE,
    attention_maps,
    draw_trajectories,
    glimpse_boxes,
    hparam_metrics,
    log_hparams,
    log_pictures,
    patch_grid,
    pictures,
    tile,
)
from tests.conftest import data_root, make_cfg, needs_mnist

SHAPE = (1, 28, 28)
K = visual.scale_factor(28, 28)  # 8: MNIST is drawn at 224 x 224


def digits(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in images (random blobs in [0, 1]) and labels: the drawing needs no dataset."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def frame_width(scales: int, patch: int = 8) -> int:
    """Width of a video frame of a 28 x 28 image: the trajectory, then the patches in a 3-pixel border."""
    return 28 * K + (28 * K - 6) // scales // patch * patch + 6


def coloured(picture: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
    """(H, W) mask of the pixels of a uint8 (3, H, W) picture that are exactly `colour`."""
    return (picture == torch.tensor(colour, dtype=torch.uint8)[:, None, None]).all(0)


def decoded(event) -> torch.Tensor:
    """A TensorBoard image event's picture as uint8 (3, H, W)."""
    image = Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


needs_fashion_mnist = pytest.mark.skipif(not (data_root() / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").exists(),
                                         reason="real Fashion-MNIST not found; set GLIMPSE_DATA")


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("height, width", [(28, 28), (60, 60), (20, 40)])
def test_glimpse_at_the_centre_is_a_box_centred_on_the_image_with_the_patch_side(height, width):
    sides = patch_sides(8, 3, 2.0)  # 8, 16, 32
    boxes = glimpse_boxes(torch.zeros(1, 2), sides, height, width)[0]  # (scales, 4)
    for (x0, y0, x1, y1), side in zip(boxes.tolist(), sides):
        assert (x1 - x0, y1 - y0) == (side, side)
        assert ((x0 + x1) / 2, (y0 + y1) / 2) == (width / 2, height / 2)


def test_glimpse_at_a_corner_is_centred_on_that_corner():
    boxes = glimpse_boxes(torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1.0, -1.0]]), [8, 16], 28, 28)
    assert boxes[0].tolist() == [[-4, -4, 4, 4], [-8, -8, 8, 8]]  # top-left corner: pixel edge (0, 0)
    assert boxes[1].tolist() == [[24, 24, 32, 32], [20, 20, 36, 36]]  # bottom-right: (28, 28)
    assert boxes[2, 0].tolist() == [24, -4, 32, 4]  # (x, y) = (1, -1): top-right


def test_boxes_are_exactly_the_pixels_the_sensor_reads():
    """Each pixel holds its own index + 1: a crop returns the indices it read, zero outside the image."""
    h, w = 20, 36
    image = (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w)
    locations = torch.rand(50, 2, generator=torch.Generator().manual_seed(1)) * 2.4 - 1.2
    for side in (3, 8, 16):
        patches = crop(image.expand(50, -1, -1, -1), locations, side)
        for patch, (x0, y0, x1, y1) in zip(patches, glimpse_boxes(locations, [side], h, w)[:, 0].long().tolist()):
            expected = [r * w + c + 1 for r in range(max(y0, 0), min(y1, h)) for c in range(max(x0, 0), min(x1, w))]
            assert sorted(patch[patch > 0].tolist()) == expected


def test_unsnapped_boxes_follow_the_differentiable_sensor():
    """DRAM's sensor (bilinear, snap=False) reads a column-index image at fractional origins: the box starts there."""
    image = torch.arange(28.0).repeat(28, 1)[None, None]  # each pixel holds its column
    location = torch.tensor([[0.13, -0.4]])
    from glimpse.sensor import retina

    read = retina(image, location, 8, resize="bilinear", snap=False)[0, 0, 0, 0]  # sample centres, as pixel indices
    x0 = glimpse_boxes(location, [8], 28, 28, snap=False)[0, 0, 0]
    # The first sample is the centre of the box's first pixel: box edge x0, centre x0 + 0.5, pixel index x0.
    assert torch.allclose(read[0], x0, atol=1e-4)


def test_attention_density_spreads_each_cell_over_its_patch():
    cells = grid_locations(28, 28, 8, 4)
    n = len(cells)
    attention = torch.zeros(1, 2, 1, n)
    attention[0, 0, 0, 7] = 1.0  # step 1: all on cell 7
    attention[0, 1, 0] = 1.0 / n  # step 2: uniform
    maps = attention_maps(attention, cells, 8, 28, 28)
    assert maps.shape == (1, 2, 1, 28, 28)
    assert torch.allclose(maps.sum((-1, -2)), torch.ones(1, 2, 1))
    x0, y0, x1, y1 = glimpse_boxes(cells[7:8], [8], 28, 28)[0, 0].long().tolist()
    inside = torch.zeros(28, 28, dtype=torch.bool)
    inside[y0:y1, x0:x1] = True
    assert torch.allclose(maps[0, 0, 0][inside], torch.full((64,), 1 / 64)) and (maps[0, 0, 0][~inside] == 0).all()


# ---------------------------------------------------------------- drawing


def test_drawn_rectangles_sit_where_the_glimpse_was():
    """Step 1 at the centre with three scales: each rectangle's outline in step 1's colour, centred, of side k * s."""
    images = torch.zeros(1, *SHAPE)
    sides = [4, 8, 16]
    picture = draw_trajectories(images, torch.zeros(1, 1, 2), sides)[0]
    assert picture.shape == (3, BAND + 28 * K, 28 * K)
    mask = coloured(picture[:, BAND:], PALETTE[0])
    centre = 14 * K
    for side in sides:
        lo, hi = centre - side * K // 2, centre + side * K // 2 - 1  # first and last screen pixel of the patch
        assert mask[lo, lo + 20 : hi - 20].all() and mask[hi, lo:hi].all() and mask[lo:hi, hi].all(), side
    # Nothing coloured outside the largest rectangle.
    lo, hi = centre - 16 * K // 2, centre + 16 * K // 2 - 1
    mask[lo : hi + 1, lo : hi + 1] = False
    assert not mask.any()


def test_a_corner_glimpse_is_clipped_at_the_corner():
    picture = draw_trajectories(torch.zeros(1, *SHAPE), torch.tensor([[[-1.0, -1.0]]]), [8])[0]
    mask = coloured(picture[:, BAND:], PALETTE[0])
    edge = 4 * K - 1  # the patch covers image pixels -4 .. 3: screen pixels up to 31
    assert mask[20, edge] and not mask[20, edge + 1] and mask[edge, 20] and not mask[edge + 1, 20]
    assert not mask[edge + 2 :, :].any() and not mask[:, edge + 2 :].any()


def test_the_target_box_is_drawn_around_its_pixels_under_the_glimpses():
    """A target box of image rows 5 .. 19 and columns 8 .. 12 (`GlimpseData.eval_boxes`), the glimpse elsewhere."""
    images, locations = torch.zeros(1, *SHAPE), torch.tensor([[[0.8, 0.8]]])
    picture = draw_trajectories(images, locations, [4], targets=torch.tensor([[5, 8, 20, 13]]))[0]
    mask = coloured(picture[:, BAND:], visual.TARGET)
    top, left, bottom, right = 5 * K, 8 * K, 20 * K - 1, 13 * K - 1  # its first and last screen rows and columns
    assert mask[top, left:right].all() and mask[bottom, left:right].all()
    assert mask[top:bottom, left].all() and mask[top:bottom, right].all()
    assert not mask[top + 2 : bottom - 1, left + 2 : right - 1].any()  # an outline, inside the box's own pixels
    assert not mask[: top].any() and not mask[bottom + 1 :].any() and not mask[:, right + 1 :].any()
    assert visual.TARGET not in PALETTE
    plain = draw_trajectories(images, locations, [4])[0]
    assert not coloured(plain, visual.TARGET).any()  # no boxes known, none drawn
    empty = draw_trajectories(images, locations, [4], targets=torch.tensor([[5, 8, 5, 8]]))[0]
    assert not coloured(empty, visual.TARGET).any()  # an image without ink has an empty box: nothing to draw


def test_steps_have_their_own_colours_and_a_path_joins_them():
    locations = torch.tensor([[[-0.5, -0.5], [0.5, 0.5]]])
    picture = draw_trajectories(torch.zeros(1, *SHAPE), locations, [8])[0, :, BAND:]
    assert coloured(picture, PALETTE[0]).any() and coloured(picture, PALETTE[1]).any()
    # The path runs along the diagonal between the two centres (7 * K and 21 * K).
    mid = 14 * K
    assert coloured(picture[:, mid - 2 : mid + 3, mid - 2 : mid + 3], visual.PATH).any()


def test_patch_grid_puts_step_t_scale_s_in_column_t_row_s():
    patches = torch.zeros(2, 3, 2, 1, 8, 8)
    patches[1, 2, 1] = 1.0  # image 1, step 3, coarse scale: white
    grid = patch_grid(patches)
    k = visual.scale_factor(8, 8, 48)
    cell = k * 8 + 6
    assert grid.shape == (2, 3, BAND + 2 * cell, 3 * cell)
    body = grid[1, :, BAND:]
    assert (body[:, cell + 3 : 2 * cell - 3, 2 * cell + 3 : 3 * cell - 3] == 255).all()
    assert (body[:, 3 : cell - 3, 3 : cell - 3] == 0).all()
    assert coloured(body, PALETTE[2])[cell, 2 * cell]  # the border has the step's colour


def test_tile_puts_pictures_row_by_row_with_white_gaps():
    pictures = torch.stack([torch.full((3, 10, 20), i, dtype=torch.uint8) for i in range(5)])  # picture i: value i
    grid = tile(pictures, columns=3)
    assert grid.shape == (3, 2 * 10 + 4, 3 * 20 + 2 * 4)  # two rows of three, 4 white pixels apart
    assert (grid[:, :10, 24:44] == 1).all() and (grid[:, 14:, 24:44] == 4).all()  # row 1: 0 1 2; row 2: 3 4
    assert (grid[:, 10:14] == 255).all() and (grid[:, 14:, 48:] == 255).all()  # a gap, and the empty sixth cell
    assert visual.grid_columns(8, 244, 224) == 4  # by default about twice as wide as tall, as a TensorBoard card


def test_captions_name_the_classes_when_given():
    assert visual.class_name(7) == "7" and visual.class_name(0, ["T-shirt/top", "Trouser"]) == "T-shirt"
    images, locations, labels = torch.zeros(1, *SHAPE), torch.zeros(1, 1, 2), torch.tensor([1])
    by_index = draw_trajectories(images, locations, [8], labels, labels)[0]
    by_name = draw_trajectories(images, locations, [8], labels, labels, class_names=["T-shirt/top", "Trouser"])[0]
    assert coloured(by_name[:, :BAND], visual.RIGHT).any()  # right: in green
    assert not torch.equal(by_index[:, :BAND], by_name[:, :BAND])  # another caption ...
    assert torch.equal(by_index[:, BAND:], by_name[:, BAND:])  # ... above the same picture


@needs_fashion_mnist
def test_fashion_mnist_pictures_name_the_garments(monkeypatch):
    """The band says 'true Sneaker / pred Bag', not 'true 7 / pred 8'.

    The data's class names, as far as any '/': 'T-shirt/top' is 'T-shirt'."""
    data = GlimpseData(make_cfg("data=fashion_mnist", "data.eval_limit=16").data, seed=0)
    assert data.class_names == tuple(torchvision.datasets.FashionMNIST.classes)
    images, labels = next(data.eval_batches("test", 4))
    model = build_model(make_cfg("data=fashion_mnist"), SHAPE, data.classes)
    written = []  # every text drawn on the pictures
    draw_text = ImageDraw.ImageDraw.text

    def text(draw, xy, words, *args, **kwargs):
        written.append(words)
        return draw_text(draw, xy, words, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    pictures(model, images, labels, class_names=data.class_names)
    garments = [data.class_names[y].split("/")[0] for y in labels.tolist()]
    names = {n.split("/")[0] for n in data.class_names}
    captions = [w for w in written if w.startswith("true ")]
    for garment in garments:  # the trajectory's caption, and each video frame's (the prediction in the last)
        assert any(c.startswith(f"true {garment} / pred ") and c.split(" / pred ")[1] in names for c in captions)
    assert not any(c.split()[1].isdigit() for c in captions)


# ---------------------------------------------------------------- TensorBoard


def read_events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_log_pictures_for_ram_writes_one_grid_of_all_images_per_kind(tmp_path):
    cfg = make_cfg("sensor.scales=2")
    model = build_model(cfg, SHAPE, 10)
    images, labels = digits(3)
    model.train()
    with SummaryWriter(str(tmp_path)) as writer:
        log_pictures(writer, model, images, labels, step=7)
    assert model.training  # given back in the mode it came in
    acc = read_events(tmp_path)
    # Three cards, all in the group 'visual', which TensorBoard's Time Series lists after the scalars' groups.
    assert set(acc.Tags()["images"]) == {"visual/trajectories", "visual/patches", "visual/episodes"}
    drawn = pictures(model, images, labels)
    trajectories = acc.Images("visual/trajectories")[0]
    assert trajectories.step == 7 and Image.open(io.BytesIO(trajectories.encoded_image_string)).format == "PNG"
    assert torch.equal(decoded(trajectories), tile(drawn["trajectory"]))  # the three in a row, 4 white pixels apart
    assert (trajectories.width, trajectories.height) == (3 * 28 * K + 2 * 4, BAND + 28 * K)
    patches = acc.Images("visual/patches")[0]  # in the trajectories' grid: image i at the same place
    assert torch.equal(decoded(patches), tile(drawn["patches"], columns=3))
    steps, scales = cfg.model.glimpses, 2
    cell = visual.scale_factor(8, 8, 48) * 8 + 6
    assert (patches.width, patches.height) == (3 * steps * cell + 2 * 4, BAND + scales * cell)
    video = acc.Images("visual/episodes")[0]  # torch's add_video: an image summary holding a GIF
    gif = Image.open(io.BytesIO(video.encoded_image_string))
    assert gif.format == "GIF" and gif.n_frames == steps and video.step == 7
    assert gif.size == (video.width, video.height) == (3 * frame_width(scales) + 2 * 4, BAND + 28 * K)


def test_without_moviepy_the_video_is_a_film_strip_and_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "moviepy", None)  # import moviepy -> ImportError
    monkeypatch.setitem(sys.modules, "moviepy.editor", None)
    visual.has_moviepy.cache_clear()
    model = build_model(make_cfg(), SHAPE, 10)
    images, labels = digits(2)
    try:
        with caplog.at_level(logging.WARNING, logger="glimpse.visual"), SummaryWriter(str(tmp_path)) as writer:
            log_pictures(writer, model, images, labels, step=1)
            log_pictures(writer, model, images, labels, step=2)
    finally:
        visual.has_moviepy.cache_clear()
    warnings = [r for r in caplog.records if "moviepy" in r.getMessage()]
    assert len(warnings) == 1
    strips = read_events(tmp_path).Images("visual/episodes")  # row i: image i's frames, left to right
    t = make_cfg().model.glimpses
    assert [e.step for e in strips] == [1, 2] and strips[0].width == t * frame_width(1) + (t - 1) * 4
    assert strips[0].height == 2 * (BAND + 28 * K) + 4
    assert Image.open(io.BytesIO(strips[0].encoded_image_string)).format == "PNG"


def test_soft_logs_attention_maps_and_fc_logs_nothing(tmp_path):
    images, labels = digits(2)
    soft = build_model(make_cfg("model=soft"), SHAPE, 10)
    fc = build_model(make_cfg("model=fc"), SHAPE, 10)
    with SummaryWriter(str(tmp_path / "soft")) as writer:
        log_pictures(writer, soft, images, labels, step=3)
    with SummaryWriter(str(tmp_path / "fc")) as writer:
        log_pictures(writer, fc, images, labels, step=3)
    acc = read_events(tmp_path / "soft")
    assert acc.Tags()["images"] == ["visual/attention"]
    maps = acc.Images("visual/attention")[0]  # both images' maps side by side
    t, heads, k = soft.glimpses, soft.heads, visual.scale_factor(28, 28, 112)
    width, height = t * (28 * k + 2) - 2, BAND + (heads + 1) * (28 * k + 2) - 2  # one image's
    assert (maps.step, maps.width, maps.height) == (3, 2 * width + 4, height)
    assert torch.equal(decoded(maps), tile(pictures(soft, images, labels)["attention"]))
    assert read_events(tmp_path / "fc").Tags()["images"] == []


def test_hparams_are_written_in_the_run_folder_itself(tmp_path):
    cfg = make_cfg("model=soft", "sensor.patch=6", "data.train_limit=512")
    metrics = {"test_error": 1.5, "test_error_greedy": 2.5, "val_error_best": 1.25, "pixels_per_image": 784.0,
               "epochs": 3}
    with SummaryWriter(str(tmp_path)) as writer:
        log_hparams(writer, cfg, hparam_metrics(metrics), step=99)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no sub-run folder, unlike add_hparams
    acc = read_events(tmp_path)
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    assert set(content) == {hparams_metadata.SESSION_START_INFO_TAG, hparams_metadata.SESSION_END_INFO_TAG}
    start = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert values["model.name"] == "soft" and values["data.name"] == "mnist" and values["sensor.patch"] == 6
    assert values["model.heads"] == 4 and values["data.train_limit"] == 512 and values["data.position"] == "None"
    assert not set(values) & RESULT_NEUTRAL_KEYS and not any(k.startswith("hydra") for k in values)  # how, not what
    assert "trainer.visual_every" not in values and "data.root" not in values and "trainer.lr" in values
    for tag, value in {"test/error": 1.5, "test/error_greedy": 2.5, "val/error_best": 1.25,
                       "test/pixels_per_image": 784.0}.items():
        assert [(e.step, e.value) for e in acc.Scalars(tag)] == [(99, value)]


# ---------------------------------------------------------------- the tensorboard server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=30) as reply:
        return reply.read()


def test_tensorboard_serves_the_pictures_and_the_hparams_table(tmp_path):
    """A ram run and a soft run, as a sweep writes them; the real tensorboard executable reads the folder.

    Skipped only when the server cannot start; it gets up to 2 minutes to answer and 2 more to load the runs.
    """
    images, labels = digits(2)
    for name in ("ram", "soft"):
        cfg = make_cfg(f"model={name}")
        with SummaryWriter(str(tmp_path / name)) as writer:
            log_pictures(writer, build_model(cfg, SHAPE, 10), images, labels, step=5)
            log_hparams(writer, cfg,
                        hparam_metrics({"test_error": 2.0 if name == "ram" else 3.0, "val_error_best": 1.0}), step=5)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path), "--port", str(port),
         "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until it answers
            if server.poll() is not None:
                pytest.skip(f"tensorboard could not start (exit {server.returncode}): "
                            f"{server.stdout.read().decode()[-500:]}")
            try:
                fetch(f"{base}/data/runs")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.skip("tensorboard did not answer within 120 s")
                time.sleep(0.5)
        deadline = time.monotonic() + 120
        while True:  # it loads the event files in the background: wait until both runs show their pictures
            tags = json.loads(fetch(f"{base}/data/plugin/images/tags"))
            if "visual/episodes" in tags.get("ram", {}) and "visual/attention" in tags.get("soft", {}):
                break
            assert time.monotonic() < deadline, f"tensorboard never listed the pictures: {tags}"
            time.sleep(1)
        assert set(tags["ram"]) == {"visual/trajectories", "visual/patches", "visual/episodes"}

        trajectories = (2 * 28 * K + 4, BAND + 28 * K)  # the two images side by side
        for run, tag, size in [("ram", "visual/trajectories", trajectories), ("soft", "visual/attention", None)]:
            query = urllib.parse.urlencode({"run": run, "tag": tag})
            entries = json.loads(fetch(f"{base}/data/plugin/images/images?{query}"))
            assert [e["step"] for e in entries] == [5]
            picture = Image.open(io.BytesIO(fetch(f"{base}/data/plugin/images/individualImage?{entries[0]['query']}")))
            assert picture.format == "PNG"
            if size:
                assert picture.size == size

        # HParams: one row per run, the union of their hparams (model.std is ram's, model.heads soft's).
        experiment = json.loads(fetch(f"{base}/data/plugin/hparams/experiment",
                                      {"experimentName": "", "includeMetrics": True}))
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"model.name", "model.std", "model.heads", "sensor.patch", "data.name"} <= names
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"test/error", "val/error_best"} <= metrics
        groups = json.loads(fetch(f"{base}/data/plugin/hparams/session_groups", {
            "experimentName": "",
            "allowedStatuses": ["STATUS_SUCCESS", "STATUS_UNKNOWN", "STATUS_RUNNING", "STATUS_FAILURE"],
            "colParams": [{"hparam": "model.name"}, {"metric": {"tag": "test/error", "group": ""}}],
            "startIndex": 0, "sliceSize": 10, "includeMetrics": True,
        }))
        rows = {g["hparams"]["model.name"]: g["metricValues"] for g in groups["sessionGroups"]}
        assert {m["name"]["tag"]: m["value"] for m in rows["ram"]}["test/error"] == 2.0
        assert {m["name"]["tag"]: m["value"] for m in rows["soft"]}["test/error"] == 3.0
    finally:
        server.kill()
        server.wait(timeout=30)
        server.stdout.close()


# ---------------------------------------------------------------- python -m glimpse.visualize


def visualize(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLIMPSE_DATA": str(data_root()), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "glimpse.visualize", *args], check=False, capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


@needs_mnist
def test_visualize_writes_pngs_and_gifs_of_a_run(tmp_path):
    from glimpse.train import train

    run = tmp_path / "run"
    train(make_cfg("data.train_limit=512", "data.eval_limit=256", "trainer.epochs=1", "trainer.eval_samples=2",
                   "sensor.scales=2", "device=cpu"), run)
    out = visualize(str(run), "--images", "3", "--out", str(tmp_path / "pictures"), "--checkpoint", "last",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    kinds = ("trajectory.png", "patches.png", "episode.gif")
    assert files == sorted([f"{i}_{kind}" for i in range(3) for kind in kinds] + ["trajectories.png"])
    assert Image.open(tmp_path / "pictures" / "2_trajectory.png").size == (28 * K, BAND + 28 * K)
    assert Image.open(tmp_path / "pictures" / "trajectories.png").size == (3 * 28 * K + 2 * 4, BAND + 28 * K)
    gif = Image.open(tmp_path / "pictures" / "0_episode.gif")
    assert gif.n_frames == 6 and gif.size == (frame_width(2), BAND + 28 * K)
    # Default: the best checkpoint, pictures inside the run folder.
    assert visualize(str(run), "--images", "1", cwd=tmp_path).returncode == 0
    assert (run / "pictures" / "0_trajectory.png").is_file()


def test_visualize_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path):
    out = visualize(str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path) in lines[0]
