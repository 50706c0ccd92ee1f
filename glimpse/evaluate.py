"""Evaluation: the sampled policy (M runs, class probabilities averaged) and the greedy policy (mean locations).

`python -m glimpse.evaluate <run folder> [<run folder> ...] [--checkpoint best|last] [--split test|val]`
reloads each run's checkpoint and prints its errors, and on canvases how often its glimpses land on the target,
as one JSON line a run, under the names metrics.json gives them.

`python -m glimpse.evaluate <run folders> --check` re-scores each run's best checkpoint on the test set and
compares the figures with its metrics.json: one line on stderr for each figure that differs, exit status 1 if any.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from glimpse import checkpoint
from glimpse.accounting import episode_pixels_read
from glimpse.config import resolve_device
from glimpse.data import GlimpseData, seeded
from glimpse.errors import UserError
from glimpse.models import build_model
from glimpse.sensor import patch_origins


def on_target(locations: Tensor, boxes: Tensor, height: int, width: int) -> Tensor:
    """Whether each glimpse's centre pixel lies in its image's target box: locations (B, T, 2), boxes (B, 4)
    (top, left, bottom, right, `GlimpseData.eval_boxes`) -> bool (B, T).

    The centre pixel is the one holding the location's centre, the 1-pixel patch `sensor.patch_origins` places there.
    """
    b, t, _ = locations.shape
    column, row = patch_origins(locations.reshape(-1, 2), 1, height, width).view(b, t, 2).unbind(-1)
    top, left, bottom, right = boxes.to(locations.device)[:, :, None].unbind(1)
    return (row >= top) & (row < bottom) & (column >= left) & (column < right)


def on_target_chance(boxes: Tensor, height: int, width: int) -> Tensor:
    """The chance that a location uniform on [-1, 1]^2 has its centre pixel in the box (`on_target`): (B,).

    The centre's pixel coordinates are then uniform on [0, width) x [0, height), so the chance is the box's share
    of the image's area.
    """
    top, left, bottom, right = boxes.cpu().double().unbind(1)
    return (bottom - top) * (right - left) / (height * width)


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    samples: int = 10,
    generator: torch.Generator | None = None,
    count_pixels: bool = False,
    boxes: Tensor | None = None,
) -> dict[str, float]:
    """Errors in percent of the sampled policy (`samples` runs averaged), of its first run alone and of the greedy
    policy.

    `error`, `error_greedy` and `error_single` (M = 1): a model without a stochastic policy gives the same figure
    for all three. With `count_pixels`, also `pixels_per_image`, the mean number of distinct pixels its greedy
    glimpses read. With `boxes`, the target boxes of the batches' images in their order
    (`GlimpseData.eval_boxes`), a model that moves its glimpses (ram, dram; not soft's grid) also gives, in
    percent, `on_target`: the share of glimpses 2 .. T of all sampled runs whose centre pixel lies in the box (the
    function `on_target`; the first glimpse's place is not the policy's choice); `on_target_greedy`: the same of
    the greedy run; `on_target_chance`: the same for uniformly random locations (the function `on_target_chance`).
    """
    was_training = model.training
    model.eval()
    wrong = wrong_greedy = wrong_single = seen = 0
    pixels = 0.0
    hits = hits_greedy = looks = 0  # glimpses 2 .. T in the box: of all sampled runs, of the greedy run; in one run
    chance = 0.0
    stochastic = getattr(model, "stochastic", False)
    for images, labels in batches:
        h, w = images.shape[-2:]
        greedy = model(images, greedy=True, generator=generator)
        wrong_greedy += (greedy.logits.argmax(1) != labels).sum().item()
        target = None
        if boxes is not None and greedy.locations is not None and greedy.attention is None:
            target = boxes[seen : seen + len(labels)]
            looks += target.shape[0] * (greedy.locations.shape[1] - 1)
            hits_greedy += on_target(greedy.locations[:, 1:], target, h, w).sum().item()
            chance += on_target_chance(target, h, w).sum().item() * (greedy.locations.shape[1] - 1)
        if stochastic:
            # The same draws from `generator` in the same order as ever: the sampled error does not change.
            probs = 0
            for k in range(samples):
                episode = model(images, generator=generator)
                probs = probs + episode.logits.softmax(1)
                if k == 0:
                    wrong_single += (episode.logits.argmax(1) != labels).sum().item()
                if target is not None:
                    hits += on_target(episode.locations[:, 1:], target, h, w).sum().item()
            wrong += (probs.argmax(1) != labels).sum().item()
        else:
            wrong += (greedy.logits.argmax(1) != labels).sum().item()
        if count_pixels:
            sides = model.sensor.sides if hasattr(model, "sensor") else []
            pixels += episode_pixels_read(greedy, sides, h, w).expand(len(labels)).sum().item()
        seen += len(labels)
    model.train(was_training)
    if not stochastic:  # its one run is the greedy run
        wrong_single, hits, samples = wrong, hits_greedy, 1
    out = {"error": 100.0 * wrong / seen, "error_greedy": 100.0 * wrong_greedy / seen,
           "error_single": 100.0 * wrong_single / seen}
    if count_pixels:
        out["pixels_per_image"] = pixels / seen
    if looks:
        out.update(on_target=100.0 * hits / (samples * looks), on_target_greedy=100.0 * hits_greedy / looks,
                   on_target_chance=100.0 * chance / looks)
    return out


def load_run(run_dir: str | Path, which: str = "best",
             device: str | None = None) -> tuple[nn.Module, dict, GlimpseData]:
    """The model of a run folder's checkpoint, its config and its data, on `device` (None: the run's own `device` key).

    Sampled-policy errors reproduce exactly on the kind of device the run trained on: CPU and
    CUDA generators draw different streams from the same seed. Greedy errors agree up to rounding.
    """
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a glimpse run folder with a checkpoint (no {path})")
    state = checkpoint.load(path, map_location="cpu")
    cfg = OmegaConf.create(state["config"])
    device = resolve_device(cfg.device if device is None else device)
    data = GlimpseData(cfg.data, cfg.seed, device)
    model = build_model(cfg, data.image_shape, data.classes).to(device)
    load_weights(model, state["model"], path)
    return model, state, data


def load_weights(model: nn.Module, weights: dict, path: str | Path) -> None:
    """load_state_dict, with a mismatch (a checkpoint of another model config) told in one line."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        details = " ".join(line.strip() for line in str(err).splitlines()[1:])[:300]
        raise UserError(f"checkpoint {path} does not fit the model its config describes: {details}") from None


SCORED = ("error", "error_greedy", "error_single", "on_target", "on_target_greedy", "on_target_chance")


def metric_name(key: str, split: str) -> str:
    """metrics.json's name for an `evaluate_model` figure scored on `split`: the errors carry the split."""
    return f"{split}_{key}" if key.startswith("error") else key


def score_run(run_dir: str | Path, which: str = "best", split: str = "test", device: str | None = None) -> dict:
    """Re-score one run folder's checkpoint on `split`: its figures under metrics.json's names (None where they
    do not apply), with the run, checkpoint, epoch and split."""
    model, state, data = load_run(run_dir, which, device)
    cfg = OmegaConf.create(state["config"])
    result = evaluate_model(
        model, data.eval_batches(split, cfg.trainer.eval_batch_size), cfg.trainer.eval_samples,
        seeded(cfg.seed, "eval", split, device=data.device), boxes=data.eval_boxes(split),
    )
    scored = {"run": str(run_dir), "checkpoint": which, "epoch": state.get("epoch"), "split": split}
    return scored | {metric_name(key, split): result.get(key) for key in SCORED}


def read_metrics(run_dir: str | Path) -> dict:
    """A run folder's metrics.json; a missing or unreadable one is the user's UserError."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.json to check against (the run did not finish)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not JSON ({err})") from None


def differences(scored: dict, metrics: dict) -> list[str]:
    """The figures of a test-set re-scoring (`score_run`) that differ from the run's metrics.json, one phrase each."""
    out = []
    for key in (metric_name(k, "test") for k in SCORED):
        mine, theirs = scored.get(key), metrics.get(key)
        if (mine is None) != (theirs is None) or (mine is not None and not math.isclose(mine, theirs, abs_tol=1e-6)):
            out.append(f"{key} {theirs} in metrics.json, {mine} re-scored")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="run", help="run folders written by python -m glimpse.train")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--device",
                        help="cpu, cuda, ... (default: the run's own device key; auto is CUDA when present)")
    parser.add_argument("--check", action="store_true",
                        help="compare each run's re-scored test figures with its metrics.json (exit 1 if any differ)")
    args = parser.parse_args(argv)
    if args.check and (args.checkpoint, args.split) != ("best", "test"):
        print("glimpse.evaluate: --check re-scores what metrics.json holds, the best checkpoint on the test set: "
              "drop --checkpoint and --split", file=sys.stderr)
        return 2
    differ = False
    for run in args.runs:
        try:
            scored = score_run(run, args.checkpoint, args.split, args.device)
            metrics = read_metrics(run) if args.check else None
        except UserError as err:
            print(f"glimpse.evaluate: {err}", file=sys.stderr)
            return 2
        if metrics is not None:
            found = differences(scored, metrics)
            scored["matches_metrics"] = not found
            differ |= bool(found)
            for line in found:
                print(f"glimpse.evaluate: {run}: {line}", file=sys.stderr)
        print(json.dumps(scored), flush=True)
    return 1 if differ else 0


def cli() -> None:
    """The console script glimpse-evaluate (pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
