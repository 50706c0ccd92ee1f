"""What a CUDA graph would give RAM's training step on a GPU: a measurement, not a training path.

    python experiments/cuda_graph_step.py experiment=ram_mnist [trainer.batch_size=512]

At batch 128 a step is a few hundred small kernels, and launching them costs the
CPU far more than the GPU spends running them (README, "On a GPU"). Here two
copies of the configured RAM start from the same weights: one steps eagerly
through `glimpse.train.train_step`, the other replays one captured CUDA graph of
the same step (episode, hybrid loss, backward, fused Adam). A graph cannot branch
on the host, so the skip of a non-finite step happens on the device: Adam's
`found_inf`, which leaves the weights, the moments and the step count as they were.
Start locations and policy noise are drawn outside the graph from the same
generator stream the eager step draws from, so both see the same numbers; after
the timed steps the script reports how far their weights drifted apart.
Prints JSON: ms per step and images/s of each, the speed-up, the largest weight difference.

The training loop's `glimpse.train.GraphedStep` (trainer.cuda_graph) grew from this measurement;
the script keeps the step it measured (experiments/results/bench/*_h100_graph_*.json) as it was.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch

from glimpse.config import compose_config, resolve_device
from glimpse.data import GlimpseData, seeded
from glimpse.errors import UserError
from glimpse.models import build_model
from glimpse.objectives import hybrid_loss
from glimpse.train import make_optimizer, train_step

STEPS, REPEATS, WARMUP = 50, 5, 3


def main(overrides: list[str]) -> dict:
    cfg = compose_config(overrides)
    device = resolve_device(cfg.device)
    if device.type != "cuda":
        raise UserError(f"device={cfg.device!r} resolves to {device}; this measurement needs a CUDA device")
    m, b = cfg.model, cfg.trainer.batch_size
    data = GlimpseData(cfg.data, cfg.seed, device)
    images, labels = next(data.train_batches(b, seeded(cfg.seed, "graph", device=device)))

    torch.manual_seed(cfg.seed)
    eager = build_model(cfg, data.image_shape, data.classes).to(device).train()
    eager_opt, _ = make_optimizer(eager, cfg)
    torch.manual_seed(cfg.seed)
    graphed = build_model(cfg, data.image_shape, data.classes).to(device).train()
    # capturable with a tensor lr: a schedule would change it in place, between replays
    opt = torch.optim.Adam(graphed.parameters(), lr=torch.tensor(cfg.trainer.lr, device=device), fused=True, capturable=True)
    opt.found_inf = torch.zeros((), device=device)  # read by the fused kernel: 1 skips the update

    eager_gen, graph_gen = seeded(cfg.seed, "draws", device=device), seeded(cfg.seed, "draws", device=device)
    static_start = torch.empty(b, 2, device=device)
    static_noise = torch.empty(b, m.glimpses - 1, 2, device=device)

    def draw() -> None:
        """RAM.forward's two draws, in its order, into the graph's inputs."""
        static_start.copy_(graphed.start(b, device, graph_gen))
        static_noise.copy_(graphed.location_net.std * torch.randn(b, m.glimpses - 1, 2, generator=graph_gen, device=device))

    def device_step() -> torch.Tensor:
        episode = graphed.episode(images, static_start, static_noise)
        loss, _ = hybrid_loss(episode, labels, m.reinforce_weight, m.baseline_weight)
        loss.backward()
        total = torch.stack([p.grad.sum() for p in graphed.parameters() if p.grad is not None]).sum() + loss.detach()
        opt.found_inf.copy_((~torch.isfinite(total)).float())
        opt.step()
        return loss

    # Warm-up on a side stream (the sensor's constants, autograd's and Adam's state), mirrored by the eager copy.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP):
            opt.zero_grad(set_to_none=True)
            draw()
            device_step()
    torch.cuda.current_stream().wait_stream(side)
    for _ in range(WARMUP):
        train_step(eager, eager_opt, images, labels, eager_gen, m)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph):
        device_step()

    def replay() -> None:
        draw()
        graph.replay()

    def eager_step() -> None:
        train_step(eager, eager_opt, images, labels, eager_gen, m)

    def seconds(step) -> float:
        torch.cuda.synchronize()
        tic = time.perf_counter()
        for _ in range(STEPS):
            step()
        torch.cuda.synchronize()
        return (time.perf_counter() - tic) / STEPS

    times = {"eager": [], "graph": []}
    for _ in range(REPEATS):  # taking turns: a drift in the machine's speed hits both
        times["eager"].append(seconds(eager_step))
        times["graph"].append(seconds(replay))
    med = {k: statistics.median(v) for k, v in times.items()}
    drift = max((a - g).abs().max().item() for a, g in zip(eager.parameters(), graphed.parameters()))
    return {
        "model": m.name, "data": cfg.data.name, "batch_size": b, "device": torch.cuda.get_device_name(),
        "steps_each": STEPS * REPEATS + WARMUP, "eager_ms": 1e3 * med["eager"], "graph_ms": 1e3 * med["graph"],
        "eager_images_per_second": b / med["eager"], "graph_images_per_second": b / med["graph"],
        "speedup": med["eager"] / med["graph"], "max_weight_difference": drift,
    }


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1:]), indent=2))
    except UserError as err:
        print(f"cuda_graph_step: {err}", file=sys.stderr)
        sys.exit(2)
