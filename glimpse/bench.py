"""`python -m glimpse.bench [--repeats R] [--steps N] [overrides]`: throughput as JSON on stdout.

Times, for the configured model and data, on the configured device:
- training images/s: whole steps (canvas generation, forward, hybrid loss,
  backward, Adam), warm-up excluded, the median of R repeats of N steps;
- inference images/s: greedy-policy forward at the same batch size;
- the share of a training step spent generating the batch and in the sensor
  (its T calls at the episode's sizes, timed alone and divided by the step time).
The overrides are those of `python -m glimpse.train`, e.g. `experiment=ram_cluttered100 trainer.batch_size=512`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

from glimpse.accounting import macs_per_image
from glimpse.config import check_image_fits, compose_config, validate
from glimpse.data import GlimpseData, seeded
from glimpse.errors import UserError
from glimpse.models import build_model
from glimpse.objectives import hybrid_loss
from glimpse.train import make_optimizer, resolve_device


def timed(fn: Callable[[], object], steps: int, repeats: int, device: torch.device) -> list[float]:
    """Seconds per call of `fn`, one figure per repeat of `steps` calls, after one warm-up repeat."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = []
    for r in range(repeats + 1):
        sync()
        tic = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        if r:  # the first repeat warms up caches and allocators
            out.append((time.perf_counter() - tic) / steps)
    return out


def matmul_gflops(batch: int, device: torch.device, repeats: int = 5) -> float:
    """This machine's fp32 matrix-product rate at the core network's shape (batch x 512 @ 512 x 256), measured now.

    Quoted beside the training rate so that figures taken at different times on a
    shared machine can be compared as fractions of what the hardware gave then.
    """
    a, w = torch.randn(batch, 512, device=device), torch.randn(512, 256, device=device)
    seconds = statistics.median(timed(lambda: a @ w, 50, repeats, device))
    return 2 * batch * 512 * 256 / seconds / 1e9


def bench(cfg, steps: int = 30, repeats: int = 5) -> dict:
    validate(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = GlimpseData(cfg.data, cfg.seed, device)
    check_image_fits(cfg, *data.train.images.shape[-2:])
    model = build_model(cfg, data.image_shape, data.classes).to(device)
    optimizer, _ = make_optimizer(model, cfg)
    b, m = cfg.trainer.batch_size, cfg.model
    gen = seeded(cfg.seed, "bench", device=device)

    def batches():
        while True:
            yield from data.train_batches(b, gen)

    stream = batches()
    first_images, first_labels = next(stream)
    while len(first_labels) < b:  # a short last batch would skew the figures
        first_images, first_labels = next(stream)

    def train_step():
        images, labels = next(stream)
        loss, _ = hybrid_loss(model(images, generator=gen), labels, m.get("reinforce_weight", 0.0), m.get("baseline_weight", 0.0))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def data_step():
        next(stream)

    sensor = getattr(model, "sensor", None)
    locations = torch.rand(m.get("glimpses", 1), b, 2, generator=gen, device=device) * 2 - 1

    def sensor_step():
        with torch.no_grad():
            for loc in locations:
                sensor(first_images, loc)

    model.train()
    train = timed(train_step, steps, repeats, device)
    model.eval()
    with torch.no_grad():
        infer = timed(lambda: model(first_images, greedy=True), steps, repeats, device)
    data_t = timed(data_step, steps, repeats, device)
    sensor_t = timed(sensor_step, steps, repeats, device) if sensor is not None else [0.0]
    step = statistics.median(train)
    macs = macs_per_image(model, first_images[:8])
    peak = matmul_gflops(b, device, repeats)
    return {
        "model": m.name, "data": cfg.data.name, "batch_size": b, "glimpses": m.get("glimpses"),
        "sensor": dict(cfg.sensor), "device": str(device), "threads": torch.get_num_threads(),
        "steps": steps, "repeats": repeats,
        "train_images_per_second": b / step,
        "train_images_per_second_repeats": [round(b / s, 1) for s in train],
        "inference_images_per_second": b / statistics.median(infer),
        "step_ms": 1e3 * step,
        "data_ms": 1e3 * statistics.median(data_t),
        "sensor_ms": 1e3 * statistics.median(sensor_t),
        "data_share": statistics.median(data_t) / step,
        "sensor_share": statistics.median(sensor_t) / step,
        "data_plus_sensor_share": (statistics.median(data_t) + statistics.median(sensor_t)) / step,
        "macs_per_image": macs,
        # forward + backward ~ 3x the forward's multiply-adds, 2 FLOPs each
        "train_gflop_per_second": 6 * macs * b / step / 1e9,
        "matmul_gflop_per_second": peak,
        "fraction_of_matmul_rate": 6 * macs * b / step / 1e9 / peak,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    parser.add_argument("overrides", nargs="*", help="config overrides, as for python -m glimpse.train")
    args = parser.parse_args(argv)
    try:
        result = bench(compose_config(args.overrides), args.steps, args.repeats)
    except UserError as err:
        print(f"glimpse.bench: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
