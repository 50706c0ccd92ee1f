"""Where a RAM training step's time goes, at several batch sizes: what grows with the batch and what does not.

    python experiments/step_phases.py [--batch-sizes 8 128 512] [overrides, default experiment=ram_mnist]

Times the pieces of `glimpse.train.train_step` (the same calls in the same order)
one by one: zero_grad, the episode's draws, the episode (forward), the hybrid loss,
backward, the finiteness check and Adam. The batch sizes take turns within each
repeat, so they see the same drift of this shared machine. At batch 8 the matrix
products are ~1/16 of batch 128's, so the batch-8 step is close to the per-step cost
that no batch size shares out: Python, dispatch and small-tensor work. Prints JSON:
per batch size the median milliseconds of each piece and images/s
(experiments/results/bench/ram_mnist_step_phases.json holds a run of it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from glimpse.bench import endless_batches, interleaved
from glimpse.config import compose_config
from glimpse.data import GlimpseData, seeded
from glimpse.models import build_model
from glimpse.objectives import hybrid_loss
from glimpse.train import make_optimizer, nonfinite

PHASES = ("zero_grad", "draws", "episode", "loss", "backward", "check", "adam")


def stepper(cfg, batch: int, times: dict[str, list[float]]):
    """One training step at `batch` per call, each phase's seconds appended to `times`."""
    torch.manual_seed(cfg.seed)
    data = GlimpseData(cfg.data, cfg.seed, "cpu")
    model = build_model(cfg, data.image_shape, data.classes)
    optimizer, _ = make_optimizer(model, cfg)
    gen = seeded(cfg.seed, "phases")
    stream = (b for b in endless_batches(data, batch, gen) if len(b[1]) == batch)
    m, clock = cfg.model, time.perf_counter

    def step() -> None:
        images, labels = next(stream)
        tic = [clock()]
        optimizer.zero_grad(set_to_none=True)
        tic.append(clock())
        start, noise = model.draws(batch, images.device, gen)
        tic.append(clock())
        episode = model.episode(images, start, noise)
        tic.append(clock())
        loss, _ = hybrid_loss(episode, labels, m.reinforce_weight, m.baseline_weight)
        tic.append(clock())
        loss.backward()
        tic.append(clock())
        finite = not bool(nonfinite(model, loss))
        tic.append(clock())
        if finite:
            optimizer.step()
        tic.append(clock())
        for name, a, b in zip(PHASES, tic, tic[1:]):
            times[name].append(b - a)

    return step


def main(batch_sizes: list[int], overrides: list[str], steps: int = 30, repeats: int = 7) -> dict:
    cfg = compose_config(overrides or ["experiment=ram_mnist"])
    times = {b: {name: [] for name in PHASES} for b in batch_sizes}
    interleaved({str(b): stepper(cfg, b, times[b]) for b in batch_sizes}, steps, repeats, torch.device("cpu"))
    out = {"overrides": overrides or ["experiment=ram_mnist"], "threads": torch.get_num_threads(), "steps": steps,
           "repeats": repeats}
    for b in batch_sizes:
        kept = {name: v[steps:] for name, v in times[b].items()}  # the warm-up round's steps dropped
        ms = {name: round(1e3 * statistics.median(v), 3) for name, v in kept.items()}
        total = statistics.median(sum(parts) for parts in zip(*kept.values()))
        out[f"batch_{b}"] = {"ms": ms, "step_ms": round(1e3 * total, 3), "images_per_second": round(b / total)}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 128, 512])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    print(json.dumps(main(args.batch_sizes, args.overrides), indent=2))
