"""Evaluation: the sampled policy (M runs, class probabilities averaged) and the greedy policy (mean locations).

`python -m glimpse.evaluate <run folder> [--checkpoint best|last] [--split test|val]`
reloads a run's checkpoint and prints its errors as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from glimpse import checkpoint
from glimpse.accounting import pixels_read
from glimpse.config import resolve_device
from glimpse.data import GlimpseData, seeded
from glimpse.errors import UserError
from glimpse.models import build_model


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    samples: int = 10,
    generator: torch.Generator | None = None,
    count_pixels: bool = False,
) -> dict[str, float]:
    """Errors in percent of the sampled policy (`samples` runs averaged) and of the greedy policy.

    A model without a stochastic policy gives the same figure for both. With
    `count_pixels`, also the mean number of distinct pixels its greedy glimpses read.
    """
    was_training = model.training
    model.eval()
    wrong = wrong_greedy = seen = 0
    pixels = 0.0
    stochastic = getattr(model, "stochastic", False)
    for images, labels in batches:
        greedy = model(images, greedy=True, generator=generator)
        wrong_greedy += (greedy.logits.argmax(1) != labels).sum().item()
        if stochastic:
            probs = sum(model(images, generator=generator).logits.softmax(1) for _ in range(samples))
            wrong += (probs.argmax(1) != labels).sum().item()
        else:
            wrong += (greedy.logits.argmax(1) != labels).sum().item()
        if count_pixels:
            sides = model.sensor.sides if hasattr(model, "sensor") else []
            pixels += pixels_read(greedy.locations, sides, *images.shape[-2:]).expand(len(labels)).sum().item()
        seen += len(labels)
    model.train(was_training)
    out = {"error": 100.0 * wrong / seen, "error_greedy": 100.0 * wrong_greedy / seen}
    if count_pixels:
        out["pixels_per_image"] = pixels / seen
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder written by python -m glimpse.train")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--device",
                        help="cpu, cuda, ... (default: the run's own device key; auto is CUDA when present)")
    args = parser.parse_args(argv)
    try:
        model, state, data = load_run(args.run, args.checkpoint, args.device)
        cfg = OmegaConf.create(state["config"])
        result = evaluate_model(
            model, data.eval_batches(args.split, cfg.trainer.eval_batch_size), cfg.trainer.eval_samples,
            seeded(cfg.seed, "eval", args.split, device=data.device),
        )
    except UserError as err:
        print(f"glimpse.evaluate: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"run": str(args.run), "checkpoint": args.checkpoint, "epoch": state.get("epoch"),
                      "split": args.split, f"{args.split}_error": result["error"],
                      f"{args.split}_error_greedy": result["error_greedy"]}))
    return 0


def cli() -> None:
    """The console script glimpse-evaluate (pyproject.toml)."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
