"""Pictures of where the models look, and the TensorBoard writing of them and of the hyperparameters.

Everything here works on whole batches of images (N, C, H, W), uint8 as the data layer serves them or float in [0, 1],
and returns uint8 RGB tensors (N, 3, H', W'), so the same pictures go to
TensorBoard (`log_pictures`) and to files (`python -m glimpse.visualize`).
Small images are enlarged by a whole factor with nearest-neighbour, so each
image pixel stays a crisp square and the glimpse rectangles fall on pixel edges.
Captions name classes by the data's class names ('Sneaker', 'airplane') when given, else by index.
On canvases the trajectories also show the target box, where the image's ink is, in TARGET's yellow.

Coordinates are docs/design.md's and glimpse/sensor.py's: a location (x, y) in
[-1, 1]^2 has its centre at pixel u = (x + 1) * W / 2, v = (y + 1) * H / 2,
where pixel j covers [j, j + 1).

TensorBoard tags (`log_pictures`), one card per kind, each holding all the shown images in a grid (row by row,
image i at the same place in each): `visual/trajectories`, `visual/patches` and `visual/episodes` (a GIF, one
frame per glimpse; without moviepy an image, row i holding image i's frames side by side) for ram and dram, and
for draw (each step's grid as its glimpse, its N x N read as its patch); `visual/attention` for soft; nothing
for fc and cnn. TensorBoard's Time Series page groups cards by the tag's first part, sorts the groups by name
and opens only the first two: `visual` sorts after the scalars' `test`, `train` and `val`, so the curves come
first and the pictures, a click away, do not push them down.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn

from glimpse.config import RESULT_NEUTRAL_KEYS, flatten
from glimpse.sensor import patch_origins

if TYPE_CHECKING:  # imported for the hints only: importing torch's tensorboard writer costs time
    from omegaconf import DictConfig
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)

# matplotlib's tab10: ten colours that stay apart on grey digits; step t gets PALETTE[t % 10].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
SIZE = 224  # target side of a drawn image, in screen pixels
BAND = 20  # height of the text band above a picture
RIGHT, WRONG, PATH = (120, 230, 120), (255, 110, 110), (235, 235, 235)
TARGET = (255, 225, 0)  # the target box: a yellow none of PALETTE's step colours comes near
GAP = 4  # white pixels between the pictures of a grid or a film strip
# metrics.json key -> scalar tag that the HParams table shows for a run (docs/design.md's tag names).
HPARAM_METRICS = {
    "test_error": "test/error", "test_error_greedy": "test/error_greedy",
    "val_error_best": "val/error_best", "pixels_per_image": "test/pixels_per_image",
    "test_error_single": "test/error_single", "on_target_greedy": "test/on_target_greedy",
}


# ---------------------------------------------------------------- geometry


def glimpse_boxes(locations: Tensor, sides: Sequence[int], height: int, width: int, snap: bool = True) -> Tensor:
    """Pixel rectangles (x0, y0, x1, y1) of the patches read at `locations` (..., 2): (..., scales, 4), float.

    The patch of side s covers columns x0 .. x1 - 1 (x1 = x0 + s), as the sensor
    reads it: with `snap` its origin is `sensor.patch_origins` (whole pixels);
    without (DRAM's differentiable sensor) the origin is the same expression unrounded.
    """
    boxes = []
    for side in sides:
        if snap:
            origin = patch_origins(locations.reshape(-1, 2), side, height, width).view(*locations.shape).float()
        else:
            origin = (locations + 1) * locations.new_tensor([width / 2, height / 2]) - side / 2  # centred exactly
        boxes.append(torch.cat([origin, origin + side], -1))
    return torch.stack(boxes, -2)


def filterbank_boxes(locations: Tensor, strides: Tensor, n: int, height: int, width: int) -> Tensor:
    """Pixel rectangles (x0, y0, x1, y1) of DRAW's N x N grids: (..., 1, 4), float, as `glimpse_boxes` gives them.

    A grid centred on `locations` (..., 2) with stride delta (`strides` (...), pixels) is drawn as N cells of side
    delta around its centre, N delta on a side: its filter centres are the cells' centres, and at delta = 1 it is
    the N x N patch the sensor would read there.
    """
    half = locations.new_tensor([width / 2, height / 2])
    centre = (locations + 1) * half  # the centre's u, v (docs/design.md)
    extent = (n * strides / 2)[..., None]
    return torch.cat([centre - extent, centre + extent], -1).unsqueeze(-2)


def attention_maps(attention: Tensor, cells: Tensor, side: int, height: int, width: int) -> Tensor:
    """Soft attention as a density over the image: (B, T, heads, N) weights on N cells -> (B, T, heads, H, W).

    Each cell's weight is spread evenly over the pixels of its finest patch
    (side x side at `cells` (N, 2) or (B, N, 2)), so overlapping cells add up and
    each map sums to 1 over the image: a pixel's value is how much of the step's
    attention lands on it, whatever the grid's stride.
    """
    if cells.dim() == 3:
        cells = cells[0]  # the grid is the same for every image
    box = glimpse_boxes(cells, [side], height, width)[:, 0]  # (N, 4)
    rows = torch.arange(height, device=cells.device)
    cols = torch.arange(width, device=cells.device)
    in_rows = ((rows >= box[:, 1:2]) & (rows < box[:, 3:4])).to(attention.dtype)  # (N, H)
    in_cols = ((cols >= box[:, 0:1]) & (cols < box[:, 2:3])).to(attention.dtype)  # (N, W)
    return torch.einsum("bthn,ny,nx->bthyx", attention, in_rows, in_cols) / side**2


# ---------------------------------------------------------------- drawing helpers


@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _rgb(images: Tensor) -> Tensor:
    """(N, C, H, W) uint8, or float in [0, 1] -> uint8 (N, 3, H, W) on the CPU; grey images are repeated to RGB."""
    images = images.detach().cpu()
    if images.dtype != torch.uint8:
        images = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images[:, :3]


def _enlarge(images: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour enlargement of (..., H, W) by a whole factor."""
    return images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def scale_factor(height: int, width: int, size: int = SIZE) -> int:
    """The whole enlargement that brings the longer side to at least `size` screen pixels."""
    return max(1, math.ceil(size / max(height, width)))


def _pil(image: Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy())


def _tensor(image: Image.Image) -> Tensor:
    return (torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            .view(image.height, image.width, 3).permute(2, 0, 1))


def class_name(index: int, class_names: Sequence[str] | None = None) -> str:
    """How a caption names class `index`: its name up to any '/' ('T-shirt/top' -> 'T-shirt'), or the index itself."""
    if class_names is None or not 0 <= index < len(class_names):
        return str(index)
    return class_names[index].split("/")[0]


def _caption(label: int | None, prediction: int | None,
             class_names: Sequence[str] | None = None) -> tuple[str, tuple[int, int, int]]:
    """'true 7 / pred 3' ('true Sneaker / pred Sandal' with the class names), green when right, red when wrong."""
    parts = [f"{word} {class_name(value, class_names)}" for word, value in (("true", label), ("pred", prediction))
             if value is not None]
    colour = PATH if label is None or prediction is None else RIGHT if label == prediction else WRONG
    return " / ".join(parts), colour


def _with_band(picture: Image.Image, text: str, colour: tuple[int, int, int]) -> Image.Image:
    """The picture below a black band holding `text`: the text never hides what was drawn."""
    out = Image.new("RGB", (picture.width, picture.height + BAND))
    out.paste(picture, (0, BAND))
    draw, size = ImageDraw.Draw(out), 14
    while size > 9 and draw.textlength(text, font=_font(size)) > picture.width - 8:  # long names on a small picture
        size -= 1
    draw.text((4, 3), text, fill=colour, font=_font(size))
    return out


def _tag(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
         limit: tuple[int, int]) -> None:
    """`text` in white on a small box of `colour` at `xy`, moved inside the picture if it would leave it."""
    font = _font(12)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 2
    x = min(max(xy[0], 0), limit[0] - w)
    y = min(max(xy[1], 0), limit[1] - h)
    draw.rectangle([x, y, x + w - 1, y + h - 1], fill=colour)
    draw.text((x + 2 - left, y + 1 - top), text, fill=(255, 255, 255), font=font)


def _items(values: Tensor | None, n: int) -> list[int | None]:
    return [None] * n if values is None else [int(v) for v in values.tolist()]


# ---------------------------------------------------------------- pictures


def draw_trajectories(
    images: Tensor, locations: Tensor, sides: Sequence[int], labels: Tensor | None = None,
    predictions: Tensor | None = None, snap: bool = True, steps: int | None = None, size: int = SIZE,
    class_names: Sequence[str] | None = None, targets: Tensor | None = None, boxes: Tensor | None = None,
) -> Tensor:
    """Each image with the glimpses of its first `steps` steps drawn on it: uint8 (N, 3, BAND + k H, k W).

    `locations` (N, T, 2). One rectangle per scale in the step's colour (finest
    thickest), the step's number at the finest rectangle's corner, and a line
    joining the patch centres in order. `targets` (N, 4), the target boxes
    (top, left, bottom, right; `GlimpseData.eval_boxes`), are drawn in TARGET
    around their pixels, under the glimpses. The band above says 'true y / pred y',
    y by its name in `class_names` (the data's `class_names`) when given.
    `boxes` (N, T, scales, 4), image pixels as `glimpse_boxes` gives them, replaces the sensor's rectangles
    (DRAW's grids: `filterbank_boxes`).
    """
    n, _, h, w = images.shape
    steps = locations.shape[1] if steps is None else steps
    k = scale_factor(h, w, size)
    if boxes is None:
        boxes = glimpse_boxes(locations[:, :steps].detach().float().cpu(), sides, h, w, snap)
    boxes = (boxes[:, :steps].detach().float().cpu() * k).tolist()
    target_boxes = [None] * n if targets is None else (targets.cpu() * k).tolist()
    pictures = _enlarge(_rgb(images), k)
    out = []
    for i, label, prediction in zip(range(n), _items(labels, n), _items(predictions, n)):
        picture = _pil(pictures[i])
        draw = ImageDraw.Draw(picture)
        target = target_boxes[i]
        if target is not None and target[2] > target[0] and target[3] > target[1]:  # an image without ink: none
            top, left, bottom, right = target
            # PIL's rectangle includes its last row and column; its outline grows inwards, onto the box's own pixels
            draw.rectangle([left, top, right - 1, bottom - 1], outline=TARGET, width=2)
        centres = [((b[0][0] + b[0][2]) / 2, (b[0][1] + b[0][3]) / 2) for b in boxes[i]]
        if len(centres) > 1:
            draw.line(centres, fill=PATH, width=2)
        for t, step_boxes in enumerate(boxes[i]):  # later steps drawn over earlier ones
            colour = PALETTE[t % len(PALETTE)]
            for s, (x0, y0, x1, y1) in enumerate(step_boxes):
                # PIL's rectangle includes its last row and column: x1 - 1 is the patch's last pixel.
                draw.rectangle([round(x0), round(y0), round(x1) - 1, round(y1) - 1], outline=colour,
                               width=max(1, 3 - s))
            cx, cy = centres[t]
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
        for t, step_boxes in enumerate(boxes[i]):  # numbers last: no rectangle crosses them
            _tag(draw, (step_boxes[0][0] + 2, step_boxes[0][1] + 2), str(t + 1), PALETTE[t % len(PALETTE)],
                 picture.size)
        out.append(_tensor(_with_band(picture, *_caption(label, prediction, class_names))))
    return torch.stack(out)


def patch_grid(patches: Tensor, size: int = 48) -> Tensor:
    """The patches the agent saw: (N, T, scales, C, p, p) -> uint8 (N, 3, BAND + scales * c, T * c).

    Column t is step t + 1 (its number on top, its border in the step's colour,
    as in `draw_trajectories`); row s is scale s, finest first, each patch as the
    network received it (resized to p x p), enlarged to about `size` pixels.
    """
    n, steps, scales, _, p, _ = patches.shape
    k, border = scale_factor(p, p, size), 3
    cell = k * p + 2 * border
    flat = _enlarge(_rgb(patches.flatten(0, 2)), k).view(n, steps, scales, 3, k * p, k * p)
    colours = torch.tensor([PALETTE[t % len(PALETTE)] for t in range(steps)], dtype=torch.uint8)
    grid = colours.view(1, steps, 1, 3, 1, 1).repeat(n, 1, scales, 1, cell, cell)
    grid[..., border:-border, border:-border] = flat
    grid = grid.permute(0, 3, 2, 4, 1, 5).reshape(n, 3, scales * cell, steps * cell)
    out = []
    for image in grid:
        picture = Image.new("RGB", (image.shape[2], image.shape[1] + BAND))
        picture.paste(_pil(image), (0, BAND))
        draw = ImageDraw.Draw(picture)
        for t in range(steps):
            draw.text((t * cell + cell // 2 - 4, 3), str(t + 1), fill=PALETTE[t % len(PALETTE)], font=_font(14))
        out.append(_tensor(picture))
    return torch.stack(out)


def episode_frames(
    images: Tensor, locations: Tensor, patches: Tensor, sides: Sequence[int], labels: Tensor | None = None,
    predictions: Tensor | None = None, snap: bool = True, size: int = SIZE, class_names: Sequence[str] | None = None,
    targets: Tensor | None = None, boxes: Tensor | None = None,
) -> Tensor:
    """One frame per glimpse: uint8 (N, T, 3, H', W'), for add_video and GIFs.

    Frame t is the trajectory so far (steps 1 .. t + 1, with the `targets` boxes
    as `draw_trajectories` draws them) with, on its right, the
    patches of step t + 1 stacked finest first in a border of the step's colour;
    the prediction appears in the last frame only, as the model makes it after
    its last glimpse. `boxes`: as `draw_trajectories` takes them.
    """
    n, steps, scales, _, p, _ = patches.shape
    border = 3
    shown = scale_factor(images.shape[-2], images.shape[-1], size) * images.shape[-2]  # the drawn image's height
    side = max(1, (shown - 2 * border) // scales // p) * p  # a whole multiple of p: patch pixels stay square
    column = _enlarge(_rgb(patches.flatten(0, 2)), side // p).view(n, steps, scales, 3, side, side)
    column = column.permute(0, 1, 3, 2, 4, 5).reshape(n, steps, 3, scales * side, side)
    frames = []
    for t in range(steps):
        said = predictions if t == steps - 1 else None
        trajectory = draw_trajectories(images, locations, sides, labels, said, snap, t + 1, size, class_names,
                                       targets, boxes)
        _, _, th, tw = trajectory.shape
        frame = torch.zeros(n, 3, max(th, BAND + scales * side + 2 * border), tw + side + 2 * border, dtype=torch.uint8)
        frame[:, :, :th, :tw] = trajectory
        frame[:, :, BAND : BAND + scales * side + 2 * border, tw:] = torch.tensor(PALETTE[t % len(PALETTE)],
                                                                                  dtype=torch.uint8)[:, None, None]
        frame[:, :, BAND + border : BAND + border + scales * side, tw + border : tw + border + side] = column[:, t]
        frames.append(frame)
    return torch.stack(frames, 1)


def film_strip(frames: Tensor, gap: int = GAP) -> Tensor:
    """Pictures (T, 3, H, W) side by side, `gap` white columns apart: a video as one image."""
    return tile(frames, columns=frames.shape[0], gap=gap)


def grid_columns(n: int, height: int, width: int) -> int:
    """How many columns make a grid of n height x width pictures about twice as wide as it is tall.

    That shape fills a TensorBoard card, so the card shows every picture at one glance.
    """
    return min(n, max(1, round(math.sqrt(2 * n * height / width))))


def tile(pictures: Tensor, columns: int | None = None, gap: int = GAP) -> Tensor:
    """Pictures (N, 3, H, W) in a grid, row by row, `gap` white pixels apart: one picture (3, H', W').

    `columns` defaults to `grid_columns`; cells past the last picture stay white.
    """
    n, c, h, w = pictures.shape
    columns = grid_columns(n, h, w) if columns is None else columns
    rows = math.ceil(n / columns)
    cells = F.pad(pictures, (0, gap, 0, gap, 0, 0, 0, rows * columns - n), value=255)
    grid = cells.view(rows, columns, c, h + gap, w + gap).permute(2, 0, 3, 1, 4)
    return grid.reshape(c, rows * (h + gap), columns * (w + gap))[:, :-gap, :-gap]


def _heat(values: Tensor) -> Tensor:
    """The 'hot' colour map (black, red, yellow, white) of values in [0, 1]: (...,) -> (..., 3) in [0, 1]."""
    return torch.stack([(3 * values).clamp(0, 1), (3 * values - 1).clamp(0, 1), (3 * values - 2).clamp(0, 1)], -1)


def draw_attention(
    images: Tensor, maps: Tensor, labels: Tensor | None = None, predictions: Tensor | None = None, size: int = 112,
    class_names: Sequence[str] | None = None,
) -> Tensor:
    """Soft attention heat maps: images (N, C, H, W), maps (N, T, heads, H, W) -> uint8 (N, 3, H', W').

    A grid of panels: column t is step t + 1, the first row the mean over heads,
    then one row per head (when there are several). Each panel is the image
    dimmed under the 'hot' colour map of its map, scaled to the panel's own
    maximum so every step's shape shows; 'all' and 'h1', 'h2', ... name the rows.
    """
    n, steps, heads, h, w = maps.shape
    maps = maps.detach().float().cpu()
    if heads > 1:
        maps = torch.cat([maps.mean(2, keepdim=True), maps], 2)
    rows, k, gap = maps.shape[2], scale_factor(h, w, size), 2
    peak = maps.flatten(-2).amax(-1).clamp_min(1e-12)[..., None, None]
    heat = _heat(maps / peak).permute(0, 1, 2, 5, 3, 4)  # (N, T, rows, 3, H, W)
    grey = _rgb(images).float()[:, None, None] / 255
    panels = (255 * (0.45 * grey + 0.55 * heat)).round().to(torch.uint8)
    panels = F.pad(_enlarge(panels, k), (0, gap, 0, gap))  # (N, T, rows, 3, kH + gap, kW + gap)
    grid = panels.permute(0, 3, 2, 4, 1, 5).reshape(n, 3, rows * (k * h + gap),
                                                    steps * (k * w + gap))[..., :-gap, :-gap]
    names = ["all"] + [f"h{j + 1}" for j in range(heads)]
    out = []
    for i, label, prediction in zip(range(n), _items(labels, n), _items(predictions, n)):
        picture = _pil(grid[i])
        draw = ImageDraw.Draw(picture)
        for t in range(steps):  # step numbers along the top row, in the steps' colours
            _tag(draw, (t * (k * w + gap) + 2, 2), str(t + 1), PALETTE[t % len(PALETTE)], picture.size)
        for r, name in enumerate(names if heads > 1 else []):  # row names down the left, at the panels' feet
            _tag(draw, (2, (r + 1) * (k * h + gap) - gap - 16), name, (60, 60, 60), picture.size)
        out.append(_tensor(_with_band(picture, *_caption(label, prediction, class_names))))
    return torch.stack(out)


@torch.no_grad()
def pictures(model: nn.Module, images: Tensor, labels: Tensor | None = None, size: int = SIZE,
             class_names: Sequence[str] | None = None, targets: Tensor | None = None) -> dict[str, Tensor]:
    """Run `model` greedily on `images` and draw whatever it supports, by name.

    Models that look through glimpses (ram, dram): 'trajectory' (N, 3, H, W),
    'patches' (N, 3, H, W) and 'frames' (N, T, 3, H, W), the trajectories with
    the target boxes `targets` (N, 4) when given. DRAW's read (draw) the same, each step's grid as its glimpse
    (`filterbank_boxes`) and its N x N read, divided by the intensity gamma, as its patch. Soft attention:
    'attention' (N, 3, H, W). Models that look at the whole image (fc, cnn): nothing.
    Captions name the classes by `class_names` (the data's `class_names`) when given.
    The model is put in eval mode for the run and given back in the mode it was in.
    """
    was_training = model.training
    model.eval()
    try:
        # A fixed generator: a model that starts at random (eval_start=random) starts at the same place each time.
        generator = torch.Generator(device=images.device).manual_seed(0)
        episode = model(images, greedy=True, generator=generator)
    finally:
        model.train(was_training)
    predictions = episode.logits.argmax(1)
    sensor = getattr(model, "sensor", None)
    h, w = images.shape[-2:]
    if episode.reads is not None:
        # gamma scales the read for the network; the filtered image itself lies in [0, 1], as pixels do
        patches = (episode.reads / episode.gammas[:, :, None, None, None]).unsqueeze(2)  # (N, T, 1, C, N, N)
        sides, snap = [], True
        boxes = filterbank_boxes(episode.locations, episode.strides, patches.shape[-1], h, w)
    elif episode.attention is not None and episode.locations is not None and sensor is not None:
        maps = attention_maps(episode.attention, episode.locations, sensor.sides[0], h, w)
        return {"attention": draw_attention(images, maps, labels, predictions, class_names=class_names)}
    elif episode.locations is None or sensor is None:
        return {}
    else:
        patches = sensor(images, episode.locations)  # (N, T, scales, C, p, p): what each step read
        sides, snap, boxes = sensor.sides, getattr(sensor, "snap", True), None
    return {
        "trajectory": draw_trajectories(images, episode.locations, sides, labels, predictions, snap, size=size,
                                        class_names=class_names, targets=targets, boxes=boxes),
        "patches": patch_grid(patches),
        "frames": episode_frames(images, episode.locations, patches, sides, labels, predictions, snap, size,
                                 class_names, targets, boxes),
    }


# ---------------------------------------------------------------- TensorBoard


@functools.lru_cache(maxsize=1)
def has_moviepy() -> bool:
    """Whether add_video can encode (moviepy < 2: torch needs moviepy.editor); says once, through logging, when not."""
    try:
        import moviepy.editor  # noqa: F401
    except ImportError:
        log.warning("moviepy<2 is not installed (pip install 'glimpse[video]'): "
                    "glimpse videos are logged as film strips")
        return False
    return True


def log_pictures(writer: SummaryWriter, model: nn.Module, images: Tensor, labels: Tensor, step: int, fps: float = 2.0,
                 class_names: Sequence[str] | None = None, targets: Tensor | None = None) -> None:
    """Write the pictures of `model` on these fixed images to TensorBoard at `step`, under the module's tags.

    Each tag holds one grid (`tile`) of all the images, so a run adds a few cards, not a few per image; image i
    has the same place in the grids of trajectories, patches and episodes (the trajectories' columns).
    `targets`: the images' target boxes (`GlimpseData.eval_boxes`), drawn on the trajectories.
    """
    drawn = pictures(model, images, labels, class_names=class_names, targets=targets)
    if "attention" in drawn:
        writer.add_image("visual/attention", tile(drawn["attention"]), step)
    if "trajectory" in drawn:
        n, _, h, w = drawn["trajectory"].shape
        columns = grid_columns(n, h, w)
        writer.add_image("visual/trajectories", tile(drawn["trajectory"], columns), step)
        writer.add_image("visual/patches", tile(drawn["patches"], columns), step)
        frames = drawn["frames"]  # (N, T, 3, H, W)
        if has_moviepy():  # frame t: step t + 1 of every episode
            grids = torch.stack([tile(frames[:, t], columns) for t in range(frames.shape[1])])
            writer.add_video("visual/episodes", grids[None], step, fps=fps)
        else:  # row i: image i's episode from left to right
            writer.add_image("visual/episodes", tile(frames.flatten(0, 1), columns=frames.shape[1]), step)


def flatten_config(cfg: DictConfig | Mapping) -> dict[str, int | float | str]:
    """The run's config as flat HParams values: {'model.glimpses': 6, 'data.name': 'mnist', ...}.

    Lists, None and booleans become strings (HParams takes numbers and strings);
    Hydra's own section and config.RESULT_NEUTRAL_KEYS (how a run is kept, not what it computes) are left out.
    """
    return {
        key: value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else str(value)
        for key, value in flatten(cfg).items()
        if key.split(".")[0] != "hydra" and key not in RESULT_NEUTRAL_KEYS
    }


def hparam_metrics(metrics: Mapping[str, object]) -> dict[str, float]:
    """The HParams metrics, by scalar tag, from a metrics.json dict (the finite numbers among HPARAM_METRICS)."""
    out = {}
    for key, tag in HPARAM_METRICS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[tag] = float(value)
    return out


def log_hparams(writer: SummaryWriter, cfg: DictConfig | Mapping, metrics: Mapping[str, float], step: int) -> None:
    """Hyperparameters and final metrics for TensorBoard's HParams tab, in the run's own folder.

    `metrics` maps scalar tags to values (see `hparam_metrics`); each is written
    as a scalar at `step`, as the HParams tab reads a metric's value from the
    run's scalars. Unlike SummaryWriter.add_hparams, no sub-run folder is made.
    Of torch's three summaries only the session's start (the hparams) and end
    are written, not the experiment: TensorBoard takes the columns of the one
    experiment summary it finds first for every run, so a sweep of ram and soft
    would lose the hparams only one of them has. Without it, TensorBoard makes
    the table from all runs: the union of their hparams, their scalars as metrics.
    """
    from torch.utils.tensorboard.summary import hparams

    _experiment, start, end = hparams(flatten_config(cfg), dict(metrics))
    for summary in (start, end):
        writer.file_writer.add_summary(summary)
    for tag, value in metrics.items():
        writer.add_scalar(tag, value, step)
