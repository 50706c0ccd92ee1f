"""Datasets and canvas variants: placement, clutter, fixed evaluation canvases, CIFAR-10's code path, missing files."""

import os
import pickle

import numpy as np
import pytest
import torch
import torchvision

from glimpse import kernels
from glimpse.data import GlimpseData, canvas_torch, ink_boxes, make_canvas, place_on_canvas, seeded
from glimpse.errors import UserError
from tests.conftest import make_cfg, needs_mnist


def placed(canvas, side=28):
    """The side x side window of one canvas (H, W) that starts at its first lit row and column: where the image went."""
    rows, cols = canvas.nonzero(as_tuple=True)
    top, left = rows.min().item(), cols.min().item()
    return canvas[top : top + side, left : left + side]


def digits(n=6, side=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, side, side, generator=g) * 255).to(torch.uint8)


def test_translated_canvas_holds_the_whole_digit_once():
    images = digits()
    canvas = make_canvas(images, 60, 0, images, seeded(1))
    assert canvas.shape == (6, 1, 60, 60) and canvas.dtype == torch.uint8
    for b in range(6):
        assert torch.equal(placed(canvas[b, 0]), images[b, 0])
        assert canvas[b].sum() == images[b].sum()  # nothing else on the canvas


def test_fixed_position_puts_the_digit_in_the_corner():
    images = digits()
    canvas = make_canvas(images, 60, 0, images, seeded(1), position=(0, 0))
    assert torch.equal(canvas[:, :, :28, :28], images)
    assert canvas[:, :, 28:, :].sum() == 0 and canvas[:, :, :, 28:].sum() == 0


def test_the_target_box_is_the_images_ink_shifted_to_where_it_went():
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    images[0, 0, 5:20, 8:13] = 200  # ink on rows 5 .. 19, columns 8 .. 12
    images[1, 0, 27, 0] = 1  # one pixel in the bottom-left corner
    assert ink_boxes(images).tolist() == [[5, 8, 20, 13], [27, 0, 28, 1]]  # (top, left, bottom, right), exclusive
    canvas, corner = place_on_canvas(images, 60, 0, images, seeded(1), position=(10, 30))
    assert corner.tolist() == [[10, 30], [10, 30]]
    box = ink_boxes(images) + corner.repeat(1, 2)
    assert box[0].tolist() == [15, 38, 30, 43]
    top, left, bottom, right = box[0].tolist()
    assert canvas[0, 0, top:bottom, left:right].int().sum() == canvas[0].int().sum() == 15 * 5 * 200  # all the ink
    assert ink_boxes(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).tolist() == [[0, 0, 0, 0]]  # no ink: an empty box


def test_placing_draws_what_make_canvas_draws():
    """The positions come from the draws make_canvas makes anyway: the canvases and the generator's stream stay."""
    images = digits(8)
    g1, g2 = seeded(4), seeded(4)
    canvas = make_canvas(images, 60, 3, images, g1, indices=torch.arange(8))
    again, corner = place_on_canvas(images, 60, 3, images, g2, indices=torch.arange(8))
    assert torch.equal(canvas, again) and torch.equal(g1.get_state(), g2.get_state())
    for b, (top, left) in enumerate(corner.tolist()):
        assert bool((again[b, :, top : top + 28, left : left + 28] >= images[b]).all())  # the image, clutter added


def test_clutter_adds_pieces_of_other_images_clipped():
    images = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    images[0] = 200  # the only image with ink: distractors can only come from it, and never land on it
    canvas = make_canvas(images, 100, 8, images, seeded(2), indices=torch.arange(8))
    assert canvas[0].int().sum() == 28 * 28 * 200  # image 0 gets no clutter: only image 0 has ink
    pieces = (canvas[1:] > 0).flatten(1).sum(1)
    assert (pieces > 0).float().mean() > 0.5  # most others got clutter from image 0
    assert (pieces <= 8 * 64).all()
    white = torch.full((2, 1, 28, 28), 250, dtype=torch.uint8)
    overlap = make_canvas(white, 28, 8, white, seeded(3))
    assert overlap.max() == 255  # sums clip at white


def test_cpu_kernel_draws_the_canvases_the_torch_ops_draw():
    """kernels.paste (the CPU's) against canvas_torch (every other device's): the same bytes, overlaps and borders
    included."""
    g = torch.Generator().manual_seed(5)
    pool = (torch.rand(50, 3, 20, 20, generator=g) * 255).to(torch.uint8)
    n, size, d, k = 16, 40, 6, 9
    images, other = pool[:n], torch.randint(0, 50, (n, k), generator=g)
    top, left = torch.randint(0, size - 20 + 1, (2, n), generator=g)
    cy, cx = torch.randint(0, 20 - d + 1, (2, n, k), generator=g)
    py, px = torch.randint(0, size - d + 1, (2, n, k), generator=g)
    py[0], px[0] = 0, size - d  # every piece of canvas 0 on one spot at the right edge: sums far past 255
    args = (images, size, top, left, pool, other, cy, cx, py, px, d)
    fast, torch_ops = kernels.paste(*args), canvas_torch(*args)
    assert fast.dtype == torch_ops.dtype == torch.uint8 and torch.equal(fast, torch_ops)
    for i in (0, 1):  # pixel by pixel: the image, then each piece summed in, then the cap
        slow = torch.zeros(3, size, size, dtype=torch.int32)
        slow[:, top[i] : top[i] + 20, left[i] : left[i] + 20] = images[i]
        for j in range(k):
            slow[:, py[i, j] : py[i, j] + d, px[i, j] : px[i, j] + d] += pool[other[i, j], :, cy[i, j] : cy[i, j] + d,
                                                                              cx[i, j] : cx[i, j] + d]
        assert torch.equal(fast[i], slow.clamp(max=255).to(torch.uint8))
    assert fast[0].max() == 255


@needs_mnist
def test_splits_are_fixed_by_the_seed_and_evaluation_canvases_never_change():
    cfg = make_cfg("data=cluttered_mnist60", "data.eval_limit=300", "data.train_limit=500")
    a, b = GlimpseData(cfg.data, seed=0), GlimpseData(cfg.data, seed=0)
    other = GlimpseData(cfg.data, seed=1)
    assert a.image_shape == (1, 60, 60) and len(a.train) == 500 and len(a.val) == 300
    assert torch.equal(a.val.fixed, b.val.fixed) and torch.equal(a.test.fixed, b.test.fixed)
    assert not torch.equal(a.val.images, other.val.images)  # the validation split depends on the seed
    assert torch.equal(a.test.fixed, other.test.fixed)  # the test set does not
    first = torch.cat([x for x, _ in a.eval_batches("val", 128)])
    again = torch.cat([x for x, _ in a.eval_batches("val", 100)])
    assert torch.equal(first, again) and first.dtype == torch.uint8
    epoch0 = next(a.train_batches(64, seeded(0, "train", 0)))[0]
    epoch1 = next(a.train_batches(64, seeded(0, "train", 1)))[0]
    replay = next(b.train_batches(64, seeded(0, "train", 0)))[0]
    assert torch.equal(epoch0, replay) and not torch.equal(epoch0, epoch1)


@needs_mnist
def test_each_evaluation_canvas_knows_the_box_of_its_digits_ink():
    translated = GlimpseData(make_cfg("data=translated_mnist", "data.eval_limit=50", "data.train_limit=10").data, 0)
    for split in ("val", "test"):
        canvases = torch.cat([x for x, _ in translated.eval_batches(split, 20)])
        boxes = translated.eval_boxes(split)
        assert boxes.shape == (50, 4) and boxes.dtype == torch.int64
        for canvas, (top, left, bottom, right) in zip(canvases, boxes.tolist()):
            rows, cols = canvas[0].nonzero(as_tuple=True)  # no clutter: every lit pixel is the digit's
            assert (top, left, bottom, right) == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
            assert bottom - top < 28 and right - left < 28  # the ink, not the image's blank 28 x 28 frame
    cluttered = GlimpseData(make_cfg("data=cluttered_mnist60", "data.eval_limit=50", "data.train_limit=10").data, 0)
    assert torch.equal(cluttered.eval_boxes("test"), translated.eval_boxes("test"))  # same digits, same places
    plain = GlimpseData(make_cfg("data.eval_limit=50", "data.train_limit=10").data, 0)
    assert plain.eval_boxes("test") is None  # no canvas: the digit fills its frame, there is nothing to find


@needs_mnist
def test_validation_is_carved_from_training_without_overlap():
    cfg = make_cfg()
    data = GlimpseData(cfg.data, seed=0)
    assert len(data.train) == 54000 and len(data.val) == 6000 and len(data.test) == 10000
    train = {bytes(x.numpy()) for x in data.train.images[:3000]}
    assert not any(bytes(x.numpy()) in train for x in data.val.images[:3000])


def write_fake_cifar(root, n=20):
    """A tiny CIFAR-10 in torchvision's pickle layout: 5 training batches and a test batch of `n` images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_cifar10_code_path_on_generated_files(tmp_path, monkeypatch):
    write_fake_cifar(tmp_path)
    # torchvision checks the real files' MD5s; ours only need to exist
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    cfg = make_cfg("data=cifar10", f"data.root={tmp_path}")
    data = GlimpseData(cfg.data, seed=0)
    assert data.image_shape == (3, 32, 32) and len(data.train) == 90 and len(data.val) == 10 and len(data.test) == 20
    assert data.class_names == tuple(f"c{i}" for i in range(10))  # the folder's own names, from its batches.meta
    x, y = next(data.train_batches(16, seeded(0)))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    cluttered = GlimpseData(make_cfg("data=cifar10", f"data.root={tmp_path}", "data.canvas=48",
                                     "data.distractors=2").data, seed=0)
    assert next(cluttered.eval_batches("test", 4))[0].shape == (4, 3, 48, 48)


def write_fake_idx(folder, n_train=60, n_test=20, side=28):
    """A tiny dataset in MNIST's raw IDX layout (as torchvision keeps MNIST and Fashion-MNIST): the test images
    returned."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        # no zero pixel: the image is findable on a canvas
        images = rng.integers(1, 256, (n, side, side), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(np.array([2051, n, side, side], ">i4").tobytes()
                                                             + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], ">i4").tobytes() + labels.tobytes())
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).long()


def test_fashion_mnist_and_its_canvas_variants_on_generated_files(tmp_path):
    test_images, test_labels = write_fake_idx(tmp_path / "FashionMNIST" / "raw")
    data = GlimpseData(make_cfg("data=fashion_mnist", f"data.root={tmp_path}").data, seed=0)
    assert data.image_shape == (1, 28, 28) and (len(data.train), len(data.val), len(data.test)) == (54, 6, 20)
    x, y = next(data.eval_batches("test", 20))
    assert torch.equal(x, test_images) and torch.equal(y, test_labels)

    translated = GlimpseData(make_cfg("data=fashion_mnist", f"data.root={tmp_path}", "data.canvas=40").data, seed=0)
    canvas = next(translated.eval_batches("test", 20))[0]
    for b in range(20):
        assert torch.equal(placed(canvas[b, 0]), test_images[b, 0])

    cluttered = GlimpseData(make_cfg("data=fashion_mnist", f"data.root={tmp_path}", "data.canvas=60",
                                     "data.distractors=4").data, seed=0)
    assert cluttered.image_shape == (1, 60, 60)
    canvas = next(cluttered.eval_batches("test", 20))[0]
    # pixels lit outside the image: the distractors' (up to 4 x 8 x 8)
    clutter = (canvas > 0).flatten(1).sum(1) - 28 * 28
    assert bool(((clutter > 0) & (clutter <= 4 * 64)).all())


@pytest.mark.parametrize("source, folder, names", [
    ("mnist", "MNIST", ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")),
    ("fashion_mnist", "FashionMNIST", ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                       "Sneaker", "Bag", "Ankle boot")),
])
def test_each_source_names_its_classes_by_label(tmp_path, source, folder, names):
    """Pictures caption label 7 of Fashion-MNIST as 'Sneaker' through these names; MNIST's digits name themselves."""
    write_fake_idx(tmp_path / folder / "raw")
    data = GlimpseData(make_cfg(f"data={source}", f"data.root={tmp_path}").data, seed=0)
    assert data.class_names == names and data.classes == 10
    assert data.class_names[7] == ("7" if source == "mnist" else "Sneaker")


def test_missing_dataset_names_the_folder_and_the_fix(tmp_path):
    cfg = make_cfg(f"data.root={tmp_path}")
    with pytest.raises(UserError) as err:
        GlimpseData(cfg.data, seed=0)
    msg = str(err.value)
    assert str(tmp_path) in msg and "MNIST/raw" in msg and "GLIMPSE_DATA" in msg and "data.root" in msg
    assert "\n" not in msg


def test_a_failed_download_says_so_and_how_to_get_the_files_in_place(tmp_path, monkeypatch):
    def offline(self):  # what torchvision raises when no mirror answers
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://... got URLError")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(UserError) as err:
        GlimpseData(make_cfg(f"data.root={tmp_path}", "data.download=true").data, seed=0)
    msg = str(err.value)
    assert "download failed" in msg and "Error downloading train-images-idx3-ubyte.gz" in msg and "\n" not in msg
    assert str(tmp_path / "MNIST" / "raw") in msg and "GLIMPSE_DATA" in msg and "data.download=true" not in msg
