"""model.fused=true (RAM's fused episode, RNNEpisode) against false (the plain autograd loop): training steps,
same weights, one process.

    python experiments/fused_vs_plain.py experiment=ram_mnist [trainer.batch_size=512]

The two take turns in 15 rounds of 10 steps each, so a drift in the machine's
speed hits both alike; prints the median images/s of each and the per-round ratio.
(experiments/results/bench/fused_vs_plain_b128.txt holds its output.)
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

import torch

from glimpse.bench import endless_batches, interleaved
from glimpse.config import compose_config
from glimpse.data import GlimpseData, seeded
from glimpse.models import build_model
from glimpse.train import make_optimizer, train_step

ROUNDS, STEPS = 15, 10


def training_step(cfg, data: GlimpseData) -> Callable[[], None]:
    """One training step of a fresh model (seed 0) of `cfg`: RNNEpisode or the plain loop as its model.fused says."""
    torch.manual_seed(0)
    model = build_model(cfg, data.image_shape, data.classes)
    optimizer, _ = make_optimizer(model, cfg)
    gen, m, b = seeded(0, "fused_vs_plain"), cfg.model, cfg.trainer.batch_size
    stream = endless_batches(data, b, gen)

    def step() -> None:
        images, labels = next(stream)
        train_step(model, optimizer, images, labels, gen, m)

    return step


def main(overrides: list[str]) -> str:
    base = overrides or ["experiment=ram_mnist"]
    flags = {"plain": "false", "fused": "true"}  # model.fused for each; plain takes the first turn
    cfgs = {name: compose_config([*base, f"model.fused={flag}"]) for name, flag in flags.items()}
    cfg = cfgs["fused"]
    data = GlimpseData(cfg.data, 0, torch.device("cpu"))
    steps = {name: training_step(c, data) for name, c in cfgs.items()}
    seconds = interleaved(steps, STEPS, ROUNDS, torch.device("cpu"))  # a warm-up round first, dropped
    b = cfg.trainer.batch_size
    ratios = [p / f for p, f in zip(seconds["plain"], seconds["fused"])]
    rates = ", ".join(f"{name} {b / statistics.median(s):,.0f}" for name, s in seconds.items())
    return (f"{' '.join(overrides)} batch {b}: images/s (medians of {ROUNDS} alternating rounds of {STEPS} steps): "
            f"{rates}; fused / plain per round: median {statistics.median(ratios):.3f}, "
            f"range {min(ratios):.2f}-{max(ratios):.2f}")


if __name__ == "__main__":
    print(main(sys.argv[1:]))
