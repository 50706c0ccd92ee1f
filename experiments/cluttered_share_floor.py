"""How small the data + sensor share of a training step could get: its parts at their fastest, against the rest.

    python experiments/cluttered_share_floor.py [experiment=ram_cluttered100 ...]

Runs `glimpse.bench` (shares timed inside the training steps), then times the
sensor's `grid_sample` alone, on one warm batch, at the preset's number of sample
points: the least a glimpse can cost with this retina. The floor share is
(T x that + the batch drawn alone) / (the rest of the step + both), where the rest is
the step minus its in-step data and sensor time. Prints JSON
(experiments/results/bench/ram_cluttered100_share_floor.json holds two runs of it).
"""

from __future__ import annotations

import json
import statistics
import sys

import torch
import torch.nn.functional as F

from glimpse.bench import bench, interleaved
from glimpse.config import compose_config
from glimpse.sensor import patch_sides


def main(overrides: list[str]) -> dict:
    overrides = overrides or ["experiment=ram_cluttered100"]
    cfg = compose_config(overrides)
    measured = bench(cfg, steps=30, repeats=7)
    s, b = cfg.sensor, cfg.trainer.batch_size
    # the points `read` samples a glimpse at: patch^2 a scale bilinearly, or every pixel of each window (area)
    mode = "bilinear" if s.get("resize") == "bilinear" else "nearest"
    points = s.scales * s.patch**2 if mode == "bilinear" else sum(n * n for n in patch_sides(s.patch, s.scales, s.scale_factor))
    c, side = (3 if cfg.data.source == "cifar10" else 1), cfg.data.canvas  # a canvas preset: data.canvas is set
    images, grid = torch.rand(b, c, side, side), torch.rand(b, 1, points, 2) * 2 - 1
    sample = lambda: F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)  # noqa: E731
    per_glimpse = 1e3 * statistics.median(interleaved({"sample": sample}, 50, 7, torch.device("cpu"))["sample"])
    rest = measured["step_ms"] - measured["data_ms"] - measured["sensor_ms"]
    sensor_floor, data_floor = cfg.model.glimpses * per_glimpse, measured["data_alone_ms"]
    return {
        "overrides": overrides, "sample_mode": mode, "points_per_glimpse": points,
        "step_ms": measured["step_ms"], "data_ms": measured["data_ms"], "sensor_ms": measured["sensor_ms"],
        "data_plus_sensor_share": measured["data_plus_sensor_share"], "rest_of_step_ms": rest,
        "grid_sample_alone_per_glimpse_ms": per_glimpse, "sensor_floor_ms": sensor_floor, "data_alone_ms": data_floor,
        "floor_share": (sensor_floor + data_floor) / (rest + sensor_floor + data_floor),
        "matmul_gflop_per_second": measured["matmul_gflop_per_second"],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
