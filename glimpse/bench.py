"""`python -m glimpse.bench [--repeats R] [--steps N] [overrides]`: throughput as JSON on stdout.

`python -m glimpse.bench mode=env [--env-id ID --num-envs N]`: random-action
env-steps/s of the torch-vectorised environment (default: 1,024 environments of
glimpse/ClutteredMNIST100-v0).

`python -m glimpse.bench mode=scaling`: for each model (at its MNIST preset) and
each canvas of 28, 60, 100, 200, 400 and 800 pixels a side (an MNIST test digit
at a random place on a blank canvas), the greedy inference seconds per image and
the MACs per image (FlopCounterMode), as JSON.

Times, for the configured model and data, on the configured device:
- training images/s: whole steps (canvas generation, then the training loop's step, `glimpse.train.train_step`:
  forward, hybrid loss, backward, the finiteness check, Adam; for RAM on CUDA its CUDA graph, `GraphedStep`),
  warm-up excluded, the median of R repeats of N steps; and episodes/s, K times that with `model.episodes_per_image`
  K (the figure to compare with images/s at K = 1: a step then runs K episodes of each of its images);
- inference images/s: greedy-policy forward at the same batch size;
- the share of a training step spent generating the batch and in the sensor,
  both timed inside the training steps themselves (the sensor's T calls by
  forward hooks): images fresh from the generator, as in training. Timed alone
  on one batch the sensor reads warm caches and looks up to 2x cheaper; those
  figures are reported too (`*_alone_*`) but are not the share.
The overrides are those of `python -m glimpse.train`, e.g. `experiment=ram_cluttered100 trainer.batch_size=512`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from glimpse.accounting import macs_per_image, params
from glimpse.config import compose_config, resolve_device, validate
from glimpse.data import GlimpseData, default_root, load_source, make_canvas, seeded
from glimpse.errors import ConfigError, UserError
from glimpse.models import MODELS, build_model
from glimpse.objectives import repeat_episodes
from glimpse.train import GraphedStep, make_optimizer, training_step


def timed(fn: Callable[[], object], steps: int, device: torch.device) -> float:
    """Seconds per call of `fn`, over `steps` calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    tic = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - tic) / steps


def interleaved(parts: dict[str, Callable[[], object]], steps: int, repeats: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each part, one figure per repeat, the parts taking turns within each repeat.

    On a shared machine the speed drifts; parts timed side by side see the same
    drift, so their ratios (shares) are steadier than the absolute figures.
    The first round warms caches and allocators and is dropped.
    """
    out: dict[str, list[float]] = {name: [] for name in parts}
    for r in range(repeats + 1):
        for name, fn in parts.items():
            seconds = timed(fn, steps, device)
            if r:
                out[name].append(seconds)
    return out


def endless_batches(data: GlimpseData, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """Training batches epoch after epoch, for as many steps as a benchmark takes."""
    while True:
        yield from data.train_batches(batch_size, generator)


def bench(cfg, steps: int = 30, repeats: int = 5) -> dict:
    validate(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = GlimpseData(cfg.data, cfg.seed, device)
    model = build_model(cfg, data.image_shape, data.classes).to(device)
    optimizer, _ = make_optimizer(model, cfg)
    take_step = training_step(model, optimizer, cfg, device)
    b, m = cfg.trainer.batch_size, cfg.model
    k = m.get("episodes_per_image", 1)  # a training step runs k * b episodes
    gen = seeded(cfg.seed, "bench", device=device)
    stream = endless_batches(data, b, gen)
    first_images, first_labels = next(stream)
    while len(first_labels) < b:  # a short last batch would skew the figures
        first_images, first_labels = next(stream)

    inside: list[tuple[float, float, float]] = []  # per training step: data, sensor and whole-step seconds
    clock = {"start": 0.0, "sensor": 0.0}  # the running sensor call's start; the step's sensor seconds so far

    def training():
        tic = time.perf_counter()
        images, labels = next(stream)
        drawn = time.perf_counter()
        clock["sensor"] = 0.0
        take_step(images, labels, gen)
        inside.append((drawn - tic, clock["sensor"], time.perf_counter() - tic))

    def data_step():
        next(stream)

    sensor = getattr(model, "sensor", None)
    # CPU ops run synchronously: a clock inside the step sees their work (elsewhere: timed alone)
    cpu = device.type == "cpu"
    if cpu and sensor is not None:
        def started(*_) -> None:
            clock["start"] = time.perf_counter()

        def finished(*_) -> None:
            clock["sensor"] += time.perf_counter() - clock["start"]

        sensor.register_forward_pre_hook(started)
        sensor.register_forward_hook(finished)
    locations = torch.rand(m.get("glimpses", 1), k * b, 2, generator=gen, device=device) * 2 - 1
    episode_images, _ = repeat_episodes(first_images, first_labels, k)  # what the training step's sensor reads

    def sensor_step():
        with torch.no_grad():
            for loc in locations:
                sensor(episode_images, loc)

    def infer_step():
        model.eval()
        with torch.no_grad():
            model(first_images, greedy=True)
        model.train()

    # This machine's fp32 matrix-product rate at the core network's shape, timed beside the steps, so
    # that figures taken at different times on a shared machine compare as fractions of what it gave then.
    a, w = torch.randn(k * b, 512, device=device), torch.randn(512, 256, device=device)
    parts = {"train": training, "data": data_step, "infer": infer_step, "matmul": lambda: a @ w}
    if sensor is not None:
        parts["sensor"] = sensor_step
    model.train()
    t = interleaved(parts, steps, repeats, device)
    t.setdefault("sensor", [0.0] * repeats)
    med = {name: statistics.median(v) for name, v in t.items()}
    step = med["train"]
    parts_timed = ("data", "sensor")
    # each part timed alone (the data stream; the sensor's T calls on one warm batch), over the step
    alone = {part: statistics.median(p / s for p, s in zip(t[part], t["train"])) for part in parts_timed}
    if cpu:
        # inside the training steps: each repeat's summed data, sensor and step seconds (the warm-up round's dropped)
        sums = [[sum(column) for column in zip(*inside[steps * (r + 1) : steps * (r + 2)])] for r in range(repeats)]
        per_step = {part: statistics.median(s[i] / steps for s in sums) for i, part in enumerate(parts_timed)}
        share = {part: statistics.median(s[i] / s[2] for s in sums) for i, part in enumerate(parts_timed)}
        both = statistics.median((s[0] + s[1]) / s[2] for s in sums)
    else:  # kernels run asynchronously: a clock inside the step would not see them
        per_step, share, both = {part: med[part] for part in parts_timed}, alone, alone["data"] + alone["sensor"]
    macs = macs_per_image(model, first_images[:8])
    flops = 6 * macs * k * b  # forward + backward ~ 3x the forward's multiply-adds, 2 FLOPs each
    peak = 2 * k * b * 512 * 256 / med["matmul"] / 1e9
    return {
        "model": m.name, "data": cfg.data.name, "batch_size": b, "glimpses": m.get("glimpses"),
        "sensor": dict(cfg.sensor), "device": str(device), "cuda_graph": isinstance(take_step, GraphedStep),
        "precision": cfg.trainer.precision, "threads": torch.get_num_threads(),
        "steps": steps, "repeats": repeats,
        "train_images_per_second": b / step,
        "train_images_per_second_repeats": [round(b / s, 1) for s in t["train"]],
        "episodes_per_image": k,
        "train_episodes_per_second": k * b / step,
        "inference_images_per_second": b / med["infer"],
        "step_ms": 1e3 * step,
        "shares_timed": "inside the training steps" if cpu else "alone",
        "data_ms": 1e3 * per_step["data"],
        "sensor_ms": 1e3 * per_step["sensor"],
        "data_share": share["data"],
        "sensor_share": share["sensor"],
        "data_plus_sensor_share": both,
        "data_alone_ms": 1e3 * med["data"],
        "sensor_alone_ms": 1e3 * med["sensor"],
        "data_plus_sensor_alone_share": alone["data"] + alone["sensor"],
        "macs_per_image": macs,
        "train_gflop_per_second": flops / step / 1e9,
        "matmul_gflop_per_second": peak,
        "fraction_of_matmul_rate": statistics.median(flops / x / (2 * k * b * 512 * 256 / m_)
                                                     for x, m_ in zip(t["train"], t["matmul"])),
    }


SIZES = (28, 60, 100, 200, 400, 800)


def scaling(models: tuple[str, ...] = MODELS, sizes: tuple[int, ...] = SIZES, batch: int = 8, repeats: int = 3,
            extra: list[str] | None = None) -> dict:
    """Inference cost against canvas size: {model: [{size, seconds_per_image, macs_per_image, params}, ...]}."""
    extra = list(extra or [])
    base = compose_config(extra)
    digits, _ = load_source(base.data.source, base.data.root or default_root(), train=False)
    device = resolve_device(base.device)
    out: dict = {"batch": batch, "repeats": repeats, "device": str(device), "threads": torch.get_num_threads(),
                 "models": {}}
    for name in models:
        cfg = compose_config([f"experiment={name}_mnist", *extra])
        built = {}
        for size in sizes:
            images = digits[:batch].to(device)
            if size > images.shape[-1]:
                images = make_canvas(images, size, 0, images, seeded(0, "scaling", size, device=device))
            torch.manual_seed(cfg.seed)
            built[size] = (build_model(cfg, tuple(images.shape[1:]), 10).to(device).eval(), images)
        # The sizes take turns within each repeat, so a drift in the machine's speed hits them alike.
        with torch.no_grad():
            t = interleaved({size: (lambda m=m, x=x: m(x, greedy=True)) for size, (m, x) in built.items()},
                            1, repeats, device)
        rows = [{"size": size, "seconds_per_image": statistics.median(t[size]) / batch,
                 "macs_per_image": macs_per_image(m, x), "params": params(m)} for size, (m, x) in built.items()]
        del built
        out["models"][name] = rows
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (the median is reported)")
    parser.add_argument("--models", default=",".join(MODELS), help="mode=scaling: models to measure")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="mode=scaling: canvas sides")
    parser.add_argument("--env-id", default="glimpse/ClutteredMNIST100-v0", help="mode=env: the registered environment")
    parser.add_argument("--num-envs", type=int, default=1024, help="mode=env: environments stepped together")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides, as for python -m glimpse.train; mode=scaling for the scaling table")
    args = parser.parse_args(argv)
    mode = "throughput"
    for o in [o for o in args.overrides if o.startswith("mode=")]:
        mode = o.split("=", 1)[1]
        args.overrides.remove(o)
    try:
        if mode == "scaling":
            models = tuple(args.models.split(","))
            for m in models:
                if m not in MODELS:
                    raise ConfigError("--models", m, ", ".join(MODELS))
            result = scaling(models, tuple(int(x) for x in args.sizes.split(",")), repeats=args.repeats,
                             extra=args.overrides)
        elif mode == "env":
            from glimpse.env import vector_steps_per_second

            env_id, num_envs = args.env_id, args.num_envs
            rates = [vector_steps_per_second(env_id, num_envs, args.steps) for _ in range(args.repeats)]
            result = {"mode": "env", "env_id": env_id, "num_envs": num_envs, "steps": args.steps,
                      "threads": torch.get_num_threads(), "env_steps_per_second": statistics.median(rates),
                      "env_steps_per_second_repeats": [round(r) for r in rates]}
        elif mode == "throughput":
            result = bench(compose_config(args.overrides), args.steps, args.repeats)
        else:
            raise ConfigError("mode", mode, "throughput, scaling, env")
    except UserError as err:
        print(f"glimpse.bench: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def cli() -> None:
    """The console script glimpse-bench (pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
