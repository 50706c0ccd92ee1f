"""Datasets held in memory as uint8 tensors, and their canvas variants made on whole batches.

A variant puts each image at a random position on a larger blank canvas
(`data.canvas`) and adds `data.distractors` clutter pieces: random
`distractor_size` x `distractor_size` crops of other images of the same split,
summed in and clipped to [0, 1] (Mnih et al. 2014, section 4.1).

Batches are uint8 pixels (B, C, H, W), as the files hold them: the models read
them as value / 255 (the sensor on the CPU straight from the bytes, whole-image
models through `unit`). A canvas batch is then a quarter of the float bytes: the
bytes, not the arithmetic, set the data + sensor share of a cluttered training
step (the measurements: experiments/results/bench/README.md).

Each source names its classes (`class_names`, by label): torchvision's names, so
pictures can say 'Sneaker' or 'airplane' where the labels say 7 or 0.

Validation is carved from the training set (`data.val_fraction`, fixed by the
seed). Validation and test canvases are drawn once and are the same at every
evaluation (test canvases do not depend on the run's seed, so every run is
scored on the same test set); training canvases are drawn anew every epoch.
Each validation and test canvas keeps the box of its image's ink (`eval_boxes`),
so evaluation can tell whether a glimpse landed on the target.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor
from torchvision.datasets import VisionDataset

from glimpse import kernels
from glimpse.errors import ConfigError, UserError

SOURCES = {
    "mnist": (torchvision.datasets.MNIST, "MNIST/raw"),
    "fashion_mnist": (torchvision.datasets.FashionMNIST, "FashionMNIST/raw"),
    "cifar10": (torchvision.datasets.CIFAR10, "cifar-10-batches-py"),
}
TEST_SEED = 20140624  # fixed: the same test canvases for every run and seed


def seeded(*key: int | str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends only on `key`: e.g. seeded(seed, "train", epoch)."""
    words = [w if isinstance(w, int) else int.from_bytes(w.encode(), "little") for w in key]
    return torch.Generator(device).manual_seed(int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1))


def default_root() -> str:
    return os.environ.get("GLIMPSE_DATA", "data")


def open_source(name: str, root: str | Path, train: bool, download: bool = False) -> VisionDataset:
    """One split of a source as torchvision's dataset; if it will not load, a UserError naming folder and fix."""
    if name not in SOURCES:
        raise UserError(f"invalid config: data.source={name!r}; allowed: {', '.join(SOURCES)}")
    cls, folder = SOURCES[name]
    root = Path(root).expanduser()
    try:
        ds = cls(root=str(root), train=train, download=download)
    except Exception as err:  # torchvision raises RuntimeError (missing, corrupt) or URLError/OSError (download failed)
        where, top = (root / folder).resolve(), folder.split("/")[0]
        cause = f"{type(err).__name__}: {next(iter(str(err).splitlines()), '')[:120]}"  # torchvision's first line
        if not download and "not found" not in str(err).lower():  # the files are there but do not parse
            raise UserError(
                f"dataset {name} in {where} could not be read, a file is corrupt or truncated ({cause}); "
                "replace its files, or point data.root / GLIMPSE_DATA elsewhere"
            ) from None
        if download:  # a second try with download=true would fail the same way: the way out is the files themselves
            raise UserError(
                f"dataset {name} not found in {where} and its download failed ({cause}); check the network, "
                f"or put the files in {where} yourself, "
                f"or point data.root=<folder> or GLIMPSE_DATA=<folder> at a folder holding {top}/"
            ) from None
        raise UserError(
            f"dataset {name} not found (or incomplete) in {where} (download is off: {type(err).__name__}); "
            f"point data.root=<folder> or GLIMPSE_DATA=<folder> at the folder holding {top}/, or set data.download=true"
        ) from None
    return ds


def as_tensors(dataset: VisionDataset) -> tuple[Tensor, Tensor]:
    """A torchvision dataset's split as (uint8 images (N, C, H, W), int64 labels (N,))."""
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)


def load_source(name: str, root: str | Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """One split of a torchvision dataset as (uint8 images (N, C, H, W), int64 labels (N,))."""
    return as_tensors(open_source(name, root, train, download))


def class_names(name: str, dataset: VisionDataset) -> tuple[str, ...]:
    """The names of source `name`'s classes, by label, from its loaded `dataset` (`open_source`).

    torchvision's: FashionMNIST's class attribute ('T-shirt/top', 'Trouser', ...), CIFAR-10's read from the
    folder's batches.meta ('airplane', 'automobile', ...); MNIST's are its digits, '0' .. '9', not
    torchvision's '0 - zero', ...: a digit names itself.
    """
    if name == "mnist":
        return tuple(str(digit) for digit in range(10))
    return tuple(str(c) for c in dataset.classes)


def unit(images: Tensor) -> Tensor:
    """Pixels as floats in [0, 1]: uint8 images (as the data layer serves them) / 255; float images as they are."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


def windows(images: Tensor, h: int, w: int) -> Tensor:
    """Every h x w window of `images` (B, C, S, T) as a view (B, C, S-h+1, T-w+1, h, w): nothing is copied."""
    b, c, s, t = images.shape
    sb, sc, ss, st = images.stride()
    return images.as_strided((b, c, s - h + 1, t - w + 1, h, w), (sb, sc, ss, st, ss, st))


def make_canvas(
    images: Tensor,
    size: int,
    distractors: int,
    pool: Tensor,
    generator: torch.Generator,
    indices: Tensor | None = None,
    distractor_size: int = 8,
    position: tuple[int, int] | None = None,
) -> Tensor:
    """Put `images` (B, C, h, w) uint8 on size x size canvases with clutter cut from `pool` (N, C, h, w).

    Returns uint8 canvases (B, C, size, size): the sums capped at 255 (the
    clipping to [0, 1] of the float pixels). `indices` are the images' positions
    in `pool`, so that distractors come from other images. `position` fixes the
    image's top-left pixel (row, column); by default it is uniform at random.
    The random draws are the same on every device; on the CPU `kernels.paste`
    draws each canvas in one pass, elsewhere `canvas_torch` does: the same canvases.
    """
    return place_on_canvas(images, size, distractors, pool, generator, indices, distractor_size, position)[0]


def place_on_canvas(
    images: Tensor,
    size: int,
    distractors: int,
    pool: Tensor,
    generator: torch.Generator,
    indices: Tensor | None = None,
    distractor_size: int = 8,
    position: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """`make_canvas`'s canvases, and where each image went: its top-left pixel (row, column), int64 (B, 2)."""
    b, c, h, w = images.shape
    dev, n, d = images.device, pool.shape[0], distractor_size
    if position is None:
        top, left = torch.randint(0, size - h + 1, (2, b), generator=generator, device=dev)
    else:
        top, left = (torch.full((b,), p, device=dev) for p in position)
    if distractors:
        base = torch.arange(b, device=dev) if indices is None else indices.to(dev)
        # An offset in [1, n) never lands on the image itself.
        other = (base[:, None] + torch.randint(1, max(n, 2), (b, distractors), generator=generator, device=dev)) % n
        cy, cx = (torch.randint(0, side - d + 1, (b, distractors), generator=generator, device=dev) for side in (h, w))
        py, px = torch.randint(0, size - d + 1, (2, b, distractors), generator=generator, device=dev)
    else:  # no draws: the generator's stream stays as it was
        other = cy = cx = py = px = torch.zeros(b, 0, dtype=torch.int64, device=dev)
    draw = kernels.paste if dev.type == "cpu" else canvas_torch
    return draw(images, size, top, left, pool, other, cy, cx, py, px, d), torch.stack([top, left], 1)


def ink_boxes(images: Tensor) -> Tensor:
    """The bounding box of each image's ink, its nonzero pixels in any channel: int64 (B, 4), (top, left, bottom,
    right) in pixels, bottom and right one past the last inked row and column; an image without ink: (0, 0, 0, 0).

    On a canvas the box of where the image went is this box shifted by its top-left pixel (`place_on_canvas`):
    where the digit is, not the mostly blank frame around it.
    """
    ink = images.ne(0).any(1)  # (B, h, w)
    boxes = []
    for lit in (ink.any(2), ink.any(1)):  # rows, columns
        first = lit.int().argmax(1)  # argmax takes the first of equal maxima
        last = lit.shape[1] - lit.flip(1).int().argmax(1)
        boxes.append((first, last))
    (top, bottom), (left, right) = boxes
    box = torch.stack([top, left, bottom, right], 1).long()
    return box.masked_fill_(~ink.flatten(1).any(1)[:, None], 0)


def canvas_torch(images: Tensor, size: int, top: Tensor, left: Tensor, pool: Tensor, other: Tensor, cy: Tensor,
                 cx: Tensor, py: Tensor, px: Tensor, d: int) -> Tensor:
    """`kernels.paste` in torch ops (any device): `images` at (top, left) and the pieces (B, K), summed in int16,
    capped at 255."""
    b, c, h, w = images.shape
    dev = images.device
    canvas = torch.zeros(b, c, size, size, dtype=torch.int16, device=dev)
    rows = torch.arange(b, device=dev)
    # Indexing a window view moves whole h x w blocks: a few index tensors of length B, not B*h*w.
    windows(canvas, h, w)[rows, :, top, left] = images.to(torch.int16)
    if other.shape[1]:
        pieces = windows(pool, d, d)[other, :, cy, cx].to(torch.int16)  # (B, K, C, d, d): whole pieces, one index op
        # flat canvas positions of every piece pixel: each piece's top-left corner plus the offsets of its
        # C x d x d pixels
        within = torch.arange(d, device=dev)
        offsets = torch.arange(c, device=dev)[:, None, None] * size * size + within[:, None] * size + within
        flat = (((rows[:, None] * c * size + py) * size + px)[:, :, None] + offsets.flatten()).flatten()
        canvas.view(-1).scatter_add_(0, flat, pieces.view(-1))
    return canvas.clamp_(max=255).to(torch.uint8)


@dataclass
class Split:
    images: Tensor  # uint8 (N, C, h, w): the source images
    labels: Tensor  # int64 (N,)
    fixed: Tensor | None = None  # uint8 (N, C, S, S): canvases drawn once (validation, test)
    boxes: Tensor | None = None  # int64 (N, 4): where each fixed canvas's image is (`GlimpseData.eval_boxes`)

    def __len__(self) -> int:
        return len(self.labels)


def check_fits(cfg, height: int, width: int) -> None:
    """Checks against the images (before any canvas is drawn): the canvas holds the image, a fixed position
    keeps it on."""
    canvas, pos = cfg.get("canvas"), cfg.get("position")
    if canvas is not None and canvas < max(height, width):
        raise ConfigError("data.canvas", canvas, f"null or at least the image side ({max(height, width)})")
    if pos is not None and (pos[0] + height > canvas or pos[1] + width > canvas):
        raise ConfigError("data.position", list(pos),
                          f"a top-left pixel that keeps the {height}x{width} image on the {canvas}x{canvas} canvas")
    if cfg.get("distractor_size", 0) > min(height, width):
        raise ConfigError("data.distractor_size", cfg.distractor_size, f"at most the image side ({min(height, width)})")


class GlimpseData:
    """Train / validation / test splits on `device`, served as uint8 batches (B, C, H, W)."""

    def __init__(self, cfg, seed: int, device: torch.device | str = "cpu"):
        self.cfg, self.seed, self.device = cfg, seed, torch.device(device)
        # The canvas settings as plain values: read at every batch, where a DictConfig lookup's cost shows.
        position = cfg.get("position")
        self.canvas: int | None = cfg.get("canvas")
        self.position = tuple(position) if position else None
        self.distractors, self.distractor_size = cfg.get("distractors", 0), cfg.get("distractor_size", 8)
        root, download = cfg.root if cfg.get("root") else default_root(), bool(cfg.get("download", False))
        source = open_source(cfg.source, root, True, download)
        self.class_names = class_names(cfg.source, source)  # by label: the pictures' captions
        train_x, train_y = as_tensors(source)
        test_x, test_y = load_source(cfg.source, root, False, download)
        order = torch.randperm(len(train_y), generator=seeded(seed, "split"))
        n_val = int(round(cfg.val_fraction * len(train_y)))
        val_idx, train_idx = order[:n_val], order[n_val:]
        if cfg.get("train_limit"):
            train_idx = train_idx[: cfg.train_limit]
        if cfg.get("eval_limit"):
            val_idx, test_x, test_y = val_idx[: cfg.eval_limit], test_x[: cfg.eval_limit], test_y[: cfg.eval_limit]
        check_fits(cfg, *train_x.shape[-2:])
        to = dict(device=self.device)
        self.train = Split(train_x[train_idx].to(**to), train_y[train_idx].to(**to))
        self.val = Split(train_x[val_idx].to(**to), train_y[val_idx].to(**to))
        self.test = Split(test_x.to(**to), test_y.to(**to))
        self.val.fixed, self.val.boxes = self._canvases(self.val, seeded(seed, "val", device=self.device))
        self.test.fixed, self.test.boxes = self._canvases(self.test, seeded(TEST_SEED, "test", device=self.device))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (c, self.canvas, self.canvas) if self.canvas else (c, h, w)

    @property
    def classes(self) -> int:
        return len(self.class_names)

    def draw(self, split: Split, idx: Tensor, generator: torch.Generator) -> Tensor:
        """uint8 images: the originals, or canvases drawn with `generator`."""
        return self.place(split, idx, generator)[0]

    def place(self, split: Split, idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """`draw`'s images, and on canvases each image's top-left pixel (row, column) (B, 2); None without."""
        images = split.images.index_select(0, idx)  # whole rows: faster than split.images[idx] for uint8
        if not self.canvas:
            return images, None
        return place_on_canvas(images, self.canvas, self.distractors, split.images, generator, indices=idx,
                               distractor_size=self.distractor_size, position=self.position)

    def _canvases(self, split: Split, generator: torch.Generator,
                  chunk: int = 4096) -> tuple[Tensor | None, Tensor | None]:
        """The split's fixed canvases and the boxes of their images (`eval_boxes`); (None, None) without a canvas."""
        if not self.canvas:
            return None, None
        idx = torch.arange(len(split), device=self.device)
        canvases, positions = zip(*(self.place(split, i, generator) for i in idx.split(chunk)))
        boxes = ink_boxes(split.images) + torch.cat(positions).repeat(1, 2)
        return torch.cat(canvases), boxes

    def train_batches(self, batch_size: int, generator: torch.Generator, start: int = 0,
                      generator_state: Tensor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch: shuffled, with fresh canvases (drawn with `generator`, so an epoch is reproducible).

        Resuming mid-epoch: `start` batches are skipped and, once the epoch's order is drawn, the
        generator is set to `generator_state` (its state when the checkpoint was written).
        """
        order = torch.randperm(len(self.train), generator=generator, device=self.device)
        if generator_state is not None:
            generator.set_state(generator_state)
        for idx in order.split(batch_size)[start:]:
            yield self.draw(self.train, idx, generator), self.train.labels.index_select(0, idx)

    def eval_boxes(self, split: str) -> Tensor | None:
        """Where the image is on each of validation's or test's canvases, in `eval_batches`' order: the bounding box
        of its ink (`ink_boxes`), int64 (N, 4) pixels (top, left, bottom, right), bottom and right exclusive.

        None without a canvas: the image fills its own frame, and looking at it says little.
        """
        return getattr(self, split).boxes

    def eval_batches(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Validation or test in a fixed order, the same canvases every time."""
        s = getattr(self, split)
        images = s.fixed if s.fixed is not None else s.images
        for lo in range(0, len(s), batch_size):
            yield images[lo : lo + batch_size], s.labels[lo : lo + batch_size]
