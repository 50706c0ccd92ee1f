"""The canvas-size curve: every model on the same digit task at canvases of 60, 100, 200 and 400 pixels a side, each
run given the same training minutes at a side.

    python experiments/canvas_size.py plan --minutes 15 --out experiments/results/canvas_size
    python experiments/canvas_size.py run --out experiments/results/canvas_size --seeds 0,1,2 [--jobs 2]
        [--models ram,draw --sides 200,400]
    python experiments/canvas_size.py table --out experiments/results/canvas_size
    python -m glimpse.compare experiments/results/canvas_size/runs --out experiments/results/canvas_size \\
        $(python experiments/canvas_size.py expected --out experiments/results/canvas_size)

The data are `data=canvas_mnist<side>`: an MNIST digit at random on the canvas with cluttered_mnist60's clutter
density, 4 pieces of other digits per 60x60 of area (4, 11, 44 and 178 pieces). Each model keeps its 100x100
preset (`experiment=<model>_cluttered100`: RAM's 8 glimpses through the 12x12, 4-scale retina, draw's 8 reads of
12 x 12 filters, soft's 8 steps over the same retina, the whole-image cnn), so across the curve only the canvas
changes. soft's grid keeps its cell count: its stride scales with the side, round(6 * side / 100) pixels
(4, 6, 12, 24): 13 to 18 grid cells a side at every side.

`plan` times each (model, side) on one thread, as the runs train (two side by side on a 2-core machine; time
it beside one other run for the same conditions): the median seconds of a few training steps (batch generation
included, as in an epoch), scaled to an epoch (a cell far over the minutes: its first step after the warm-up).
The epochs that fill `--minutes` of training are fixed from it, floor(minutes / epoch minutes), and written with
the timings to `plan.json`. Where one epoch takes longer than the minutes (or the step fails for memory) the
cell is marked not run, with why; `expected` prints those as `glimpse.compare --expect-run` arguments, so the
table and the plots say so instead of leaving a gap. `run` trains the planned cells (all, or those of `--models`
and `--sides`) for each seed into `runs/<model>_<side>_s<seed>` (one thread each, `--jobs` at a time), skipping
runs that finished and resuming those that stopped. `table` prints the plan as Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SIDES = (60, 100, 200, 400)
MODELS = ("ram", "draw", "soft", "cnn")
STEPS = 5  # timed training steps per cell (after one warm-up step): an epoch is some 420 of them


def overrides(model: str, side: int) -> list[str]:
    """The glimpse.train overrides of one cell: the model's 100x100 preset on the side's canvas."""
    cell = [f"experiment={model}_cluttered100", f"data=canvas_mnist{side}"]
    if model == "soft":
        cell.append(f"model.stride={round(6 * side / 100)}")
    return cell


def epoch_seconds(cell: list[str], limit: float) -> tuple[float, int]:
    """Training seconds of one epoch of `cell` on this process's threads, and the steps timed: the median of
    STEPS whole steps (the batch drawn, then glimpse.train's training step) after a warm-up step, times the steps
    in an epoch. Where the first step after the warm-up puts the epoch over twice `limit` seconds: that estimate
    (1 step timed)."""
    import torch

    from glimpse.config import compose_config, resolve_device, validate
    from glimpse.data import GlimpseData, seeded
    from glimpse.models import build_model
    from glimpse.train import make_optimizer, training_step

    cfg = compose_config([*cell, "data.eval_limit=100"])  # the fixed evaluation canvases do not change a step
    validate(cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    data = GlimpseData(cfg.data, cfg.seed, device)
    model = build_model(cfg, data.image_shape, data.classes).to(device)
    optimizer, _ = make_optimizer(model, cfg)
    take_step = training_step(model, optimizer, cfg, device)
    gen = seeded(cfg.seed, "plan", device=device)
    batches = data.train_batches(cfg.trainer.batch_size, gen)
    per_epoch = math.ceil(len(data.train) / cfg.trainer.batch_size)
    seconds = []
    for _ in range(STEPS + 1):
        tic = time.perf_counter()
        images, labels = next(batches)
        take_step(images, labels, gen)
        seconds.append(time.perf_counter() - tic)
        if len(seconds) == 2 and seconds[1] * per_epoch > 2 * limit:
            return seconds[1] * per_epoch, 1
    return statistics.median(seconds[1:]) * per_epoch, STEPS


def plan(minutes: float, out: Path, models: tuple[str, ...], sides: tuple[int, ...]) -> dict:
    import torch

    torch.set_num_threads(1)
    cells = []
    for side in sides:
        for model in models:
            cell = {"model": model, "side": side, "data": f"canvas_mnist{side}", "overrides": overrides(model, side)}
            try:
                seconds, cell["steps_timed"] = epoch_seconds(cell["overrides"], minutes * 60)
            except (RuntimeError, MemoryError) as err:  # torch's out-of-memory is a RuntimeError on the CPU
                cell.update(epochs=0, reason=f"a training step failed: {str(err).splitlines()[0][:120]}")
            else:
                epochs = math.floor(minutes * 60 / seconds)
                cell.update(epoch_minutes=round(seconds / 60, 2), epochs=epochs)
                if epochs < 1:
                    cell["reason"] = f"one epoch takes {seconds / 60:.0f} training minutes on one thread"
            print(json.dumps(cell), file=sys.stderr)
            cells.append(cell)
    result = {"minutes": minutes, "threads": 1, "cells": cells}
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def train_one(cell: dict, seed: int, runs: Path) -> str:
    folder = runs / f"{cell['model']}_{cell['side']}_s{seed}"
    if (folder / "metrics.json").exists():
        return f"{folder}: finished before"
    resume = ["trainer.resume=true"] if (folder / "checkpoints" / "last.pt").exists() else []
    command = [sys.executable, "-m", "glimpse.train", *cell["overrides"], f"trainer.epochs={cell['epochs']}",
               f"seed={seed}", "trainer.progress=false", f"hydra.run.dir={folder}", *resume]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "stdout.txt", "a") as log:
        rc = subprocess.call(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    return f"{folder}: exit {rc} ({shlex.join(command[1:])})"


def run(out: Path, seeds: list[int], jobs: int, models: tuple[str, ...] = MODELS,
        sides: tuple[int, ...] = SIDES) -> None:
    """Train the plan's cells of `models` and `sides` that can run, for each of `seeds`."""
    cells = [c for c in json.loads((out / "plan.json").read_text())["cells"]
             if c["epochs"] >= 1 and c["model"] in models and c["side"] in sides]
    with ThreadPoolExecutor(jobs) as pool:
        for line in pool.map(lambda job: train_one(*job, out / "runs"), [(c, s) for c in cells for s in seeds]):
            print(line, flush=True)


def expected(out: Path) -> list[str]:
    """`--expect-run DATA:MODEL=WHY` for each cell of the plan that is not run."""
    cells = json.loads((out / "plan.json").read_text())["cells"]
    return [f"--expect-run={c['data']}:{c['model']}={c['reason']}" for c in cells if c["epochs"] < 1]


def plan_table(out: Path) -> str:
    """plan.json as Markdown: per side (rows) and model (columns), one epoch's training minutes on one thread and
    the epochs that fill the plan's minutes, or why the cell is not run."""
    result = json.loads((out / "plan.json").read_text())
    cells = {(c["side"], c["model"]): c for c in result["cells"]}
    models = [m for m in MODELS if any(m == model for _, model in cells)] + sorted(
        {m for _, m in cells} - set(MODELS))
    lines = [f"| canvas side | {' | '.join(models)} |", "| --- |" + " --- |" * len(models)]
    for side in sorted({side for side, _ in cells}):
        row = []
        for model in models:
            c = cells.get((side, model))
            if c is None:
                row.append("–")
            elif "epoch_minutes" not in c:
                row.append(f"not run: {c['reason']}")
            else:
                row.append(f"{c['epoch_minutes']:.2f} min, {c['epochs']} epoch{'s' * (c['epochs'] > 1)}"
                           if c["epochs"] >= 1
                           else f"{c['epoch_minutes']:.0f} min: not run")
        lines.append(f"| {side} | {' | '.join(row)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("plan", "run", "expected", "table"))
    p.add_argument("--out", type=Path, required=True, help="the curve's folder: plan.json and runs/")
    p.add_argument("--minutes", type=float, default=15.0, help="plan: training minutes a run")
    p.add_argument("--models", default=",".join(MODELS), help="plan, run: models, comma-separated")
    p.add_argument("--sides", default=",".join(map(str, SIDES)), help="plan, run: canvas sides, comma-separated")
    p.add_argument("--seeds", default="0,1,2", help="run: seeds, comma-separated")
    p.add_argument("--jobs", type=int, default=2, help="run: runs trained at a time, one thread each")
    args = p.parse_args(argv)
    models, sides = tuple(args.models.split(",")), tuple(int(s) for s in args.sides.split(","))
    if args.action == "plan":
        plan(args.minutes, args.out, models, sides)
    elif args.action == "run":
        run(args.out, [int(s) for s in args.seeds.split(",")], args.jobs, models, sides)
    elif args.action == "table":
        print(plan_table(args.out))
    else:
        print(shlex.join(expected(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
