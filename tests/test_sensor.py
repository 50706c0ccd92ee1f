"""The retina against a slow per-sample reference written straight from docs/design.md's definition."""

import math

import pytest
import torch
import torch.nn.functional as F

from glimpse.sensor import Sensor, crop, patch_sides, retina, sample


def reference_glimpse(image: torch.Tensor, x: float, y: float, patch: int, scales: int, factor: float,
                      resize: str = "area") -> torch.Tensor:
    """One image (C, H, W): pixel by pixel, zero outside, each patch resized to patch x patch."""
    c, h, w = image.shape
    u, v = (x + 1) * w / 2, (y + 1) * h / 2
    out = []
    for i in range(scales):
        side = int(round(patch * factor**i))
        left, top = math.floor(u - side / 2 + 0.5), math.floor(v - side / 2 + 0.5)
        window = torch.zeros(c, side, side, dtype=torch.float64)
        for r in range(side):
            for q in range(side):
                if 0 <= top + r < h and 0 <= left + q < w:
                    window[:, r, q] = image[:, top + r, left + q]
        if resize == "bilinear":
            small = F.interpolate(window[None], size=patch, mode="bilinear", align_corners=False, antialias=False)[0]
        elif side % patch == 0:
            k = side // patch
            small = torch.zeros(c, patch, patch, dtype=torch.float64)
            for r in range(patch):
                for q in range(patch):
                    small[:, r, q] = window[:, r * k : (r + 1) * k, q * k : (q + 1) * k].mean((1, 2))
        else:
            small = F.adaptive_avg_pool2d(window[None], patch)[0]
        out.append(small)
    return torch.stack(out)


BORDER = [(-1.0, -1.0), (1.0, 1.0), (-1.0, 1.0), (1.0, -1.0), (0.0, 0.0), (-0.96875, 0.5), (0.999, -0.999)]


@pytest.mark.parametrize(
    "shape, patch, scales, factor",
    [((1, 28, 28), 8, 1, 2.0), ((1, 60, 60), 12, 3, 2.0), ((1, 100, 100), 12, 4, 2.0), ((3, 32, 32), 5, 2, 2.0),
     ((1, 40, 56), 6, 3, 1.5), ((2, 9, 13), 4, 2, 3.0)],
)
@pytest.mark.parametrize("resize", ["area", "bilinear"])
def test_retina_matches_the_per_sample_reference(shape, patch, scales, factor, resize):
    g = torch.Generator().manual_seed(sum(shape) + patch)
    n = 24
    images = torch.rand(n + len(BORDER), *shape, generator=g)
    locations = torch.cat([torch.rand(n, 2, generator=g) * 2.4 - 1.2, torch.tensor(BORDER)]).clamp(-1, 1)
    fast = retina(images, locations, patch, scales, factor, resize)
    assert fast.shape == (len(images), scales, shape[0], patch, patch)
    for b in range(len(images)):
        slow = reference_glimpse(images[b].double(), locations[b, 0].item(), locations[b, 1].item(), patch, scales,
                                 factor, resize)
        torch.testing.assert_close(fast[b].double(), slow, rtol=1e-4, atol=1e-5)


def test_centre_glimpse_is_the_centred_window():
    image = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    window = crop(image, torch.zeros(1, 2), 8)
    torch.testing.assert_close(window[0, 0], image[0, 0, 10:18, 10:18])


def test_outside_the_image_reads_zero_and_corner_is_a_quarter_inside():
    image = torch.ones(1, 1, 28, 28)
    window = crop(image, torch.tensor([[-1.0, -1.0]]), 8)  # centred on the top-left corner
    assert window.sum() == 16 and window[0, 0, 4:, 4:].sum() == 16
    far = crop(image, torch.tensor([[-1.0, -1.0]]), 4) + crop(image, torch.tensor([[1.0, 1.0]]), 4)
    assert far.sum() == 8  # 2x2 inside at each corner


def test_sensor_module_and_sides():
    sensor = Sensor(12, 4, 2.0)
    assert sensor.sides == patch_sides(12, 4, 2.0) == [12, 24, 48, 96]
    out = sensor(torch.rand(5, 1, 100, 100), torch.zeros(5, 2))
    assert out.shape == (5, 4, 1, 12, 12)


def test_glimpse_does_not_depend_on_the_rest_of_the_image():
    """Same pixels around the location, different image sizes and content elsewhere: the same glimpse."""
    g = torch.Generator().manual_seed(0)
    small = torch.rand(3, 1, 28, 28, generator=g)
    big = torch.rand(3, 1, 280, 280, generator=g)
    big[:, :, :28, :28] = small
    # location of pixel (14, 14) in each image's coordinates
    loc_small, loc_big = torch.zeros(3, 2), torch.full((3, 2), 14 / 140 - 1)
    torch.testing.assert_close(crop(small, loc_small, 8), crop(big, loc_big, 8))


def test_bilinear_equals_area_up_to_a_ratio_of_two():
    g = torch.Generator().manual_seed(3)
    images, locations = torch.rand(16, 1, 60, 60, generator=g), torch.rand(16, 2, generator=g) * 2 - 1
    torch.testing.assert_close(retina(images, locations, 12, 2, 2.0, "bilinear"),
                               retina(images, locations, 12, 2, 2.0, "area"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("resize", ["area", "bilinear"])
def test_many_locations_per_image_equal_one_call_per_location(resize):
    g = torch.Generator().manual_seed(4)
    images, locations = torch.rand(3, 2, 40, 40, generator=g), torch.rand(3, 5, 2, generator=g) * 2.2 - 1.1
    many = retina(images, locations, 6, 3, 2.0, resize)
    assert many.shape == (3, 5, 3, 2, 6, 6)
    for i in range(5):
        torch.testing.assert_close(many[:, i], retina(images, locations[:, i], 6, 3, 2.0, resize))


def test_unsnapped_bilinear_glimpse_is_differentiable_in_the_location():
    from glimpse.sensor import sample

    images = torch.rand(2, 1, 28, 28)
    locations = torch.tensor([[0.1, -0.2], [0.33, 0.4]], requires_grad=True)
    sample(images, locations, 8, (8, 16), snap=False).sum().backward()
    assert locations.grad.abs().sum() > 0


def test_unsnapped_glimpse_is_centred_on_its_location_like_the_snapped_one():
    """Where the snapped origin needs no rounding, both read the very same window (no half-pixel shift)."""
    images = torch.rand(3, 1, 28, 28)
    for x, y in [(0.0, 0.0), (-0.5, 0.5), (2 / 28, -6 / 28)]:  # origins on whole pixels for sides 8 and 16
        locations = torch.tensor([[x, y]] * 3)
        snapped = sample(images, locations, 8, (8, 16), snap=True)
        assert torch.allclose(sample(images, locations, 8, (8, 16), snap=False), snapped, atol=1e-6)


@pytest.mark.parametrize("resize", ["area", "bilinear"])
@pytest.mark.parametrize("shape, patch, scales, factor",
                         [((1, 100, 100), 12, 4, 2.0), ((3, 32, 32), 5, 2, 2.0), ((1, 40, 56), 6, 3, 1.5)])
def test_cpu_kernel_reads_uint8_and_float_as_grid_sample_does(shape, patch, scales, factor, resize):
    """The CPU's kernels.read against the grid_sample path every other device takes, on float and on uint8 pixels."""
    from glimpse.sensor import area

    g = torch.Generator().manual_seed(patch)
    pixels = (torch.rand(20, *shape, generator=g) * 255).to(torch.uint8)
    locations = torch.cat([torch.rand(13, 3, 2, generator=g) * 2.4 - 1.2,
                           torch.tensor(BORDER)[:, None].expand(-1, 3, -1)]).clamp(-1, 1)
    sides = tuple(patch_sides(patch, scales, factor))
    grid_sampled = (sample if resize == "bilinear" else area)(pixels.float() / 255, locations, patch, sides)
    from_bytes, from_floats = (retina(pixels, locations, patch, scales, factor, resize),
                               retina(pixels.float() / 255, locations, patch, scales, factor, resize))
    assert from_bytes.dtype == torch.float32 and from_bytes.shape == (20, 3, scales, shape[0], patch, patch)
    torch.testing.assert_close(from_bytes, grid_sampled, rtol=0, atol=2e-5)
    torch.testing.assert_close(from_floats, from_bytes, rtol=0, atol=1e-6)


def test_cropped_bytes_are_the_pixels_over_255_exactly():
    pixels = (torch.rand(4, 2, 30, 30) * 255).to(torch.uint8)
    locations = torch.rand(4, 2) * 2 - 1
    assert torch.equal(crop(pixels, locations, 7), crop(pixels.float() / 255, locations, 7))


def test_cpu_kernel_places_patches_where_patch_origins_does_to_the_last_bit():
    """Origins are floor(shift + l * half) as one rounding (addcmul): a multiply then an add would move some patch
    a pixel."""
    from glimpse.sensor import _shift, patch_origins

    half = torch.tensor([14.0, 14.0])
    loc = torch.rand(2_000_000, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    twice_rounded = (_shift(half, 8) + loc * half).floor()
    edge = loc[(torch.addcmul(_shift(half, 8), loc, half).floor() != twice_rounded).any(1)][:1]
    assert len(edge) == 1  # such a location exists among these draws
    image = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    x, y = patch_origins(edge, 8, 28, 28)[0].tolist()
    window = torch.zeros(8, 8)
    inside = image[0, 0, max(y, 0) : y + 8, max(x, 0) : x + 8]
    window[max(-y, 0) : max(-y, 0) + inside.shape[0], max(-x, 0) : max(-x, 0) + inside.shape[1]] = inside
    torch.testing.assert_close(crop(image, edge, 8)[0, 0], window, rtol=0, atol=0)


@pytest.mark.parametrize("height, width", [(28, 28), (100, 100), (29, 60)])
def test_cpu_kernel_origins_equal_patch_origins_over_many_locations(height, width):
    """The kernel computes each origin itself (one rounding, as addcmul): every 1x1 and 7x7 window starts where
    patch_origins says."""
    from glimpse.sensor import patch_origins

    pixels = torch.arange(1, height * width + 1, dtype=torch.float32).view(1, 1, height, width)  # 0 only outside
    locations = torch.rand(200_000, 2, generator=torch.Generator().manual_seed(height + width)) * 2 - 1
    for side in (1, 7):
        x, y = patch_origins(locations, side, height, width).unbind(1)
        inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
        expected = torch.where(inside, y * width + x + 1, 0).float()
        assert torch.equal(crop(pixels, locations[None], side)[0, :, 0, 0, 0], expected)


@pytest.mark.parametrize("images", [(torch.rand(6, 2, 40, 40) * 255).to(torch.uint8),
                                    torch.rand(6, 2, 40, 40, dtype=torch.float64)],
                         ids=["cpu kernel", "grid_sample"])
def test_sensor_writes_into_a_given_buffer(images):
    """`out=` (RAM's per-step rows): the patches land in the buffer, the same values as a fresh result, nothing else
    touched."""
    sensor, locations = Sensor(6, 3, 2.0, "bilinear"), torch.rand(6, 2) * 2 - 1
    rows = torch.full((6, 3 * 2 * 6 * 6 + 2), -7.0,
                      dtype=torch.float32 if images.dtype == torch.uint8 else images.dtype)
    view = rows[:, :-2].view(6, 3, 2, 6, 6)
    assert sensor(images, locations, out=view) is view
    torch.testing.assert_close(view, sensor(images, locations), rtol=0, atol=0)
    assert (rows[:, -2:] == -7).all()


def test_a_run_given_one_thread_starts_numba_with_one_thread_too():
    """Two runs side by side with OMP_NUM_THREADS=1 each: numba's pool must not be every core's width."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"} | {"OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", "import glimpse.kernels, numba; print(numba.config.NUMBA_NUM_THREADS)"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
