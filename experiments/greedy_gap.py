"""Where RAM's greedy gap comes from: a run's checkpoint re-scored on validation images with the policy's std
changed at evaluation only, and from random starts.

    python experiments/greedy_gap.py <run folder> [--images 2000] [--checkpoint best|last]

Prints one JSON line per setting: the sampled error (M = trainer.eval_samples runs averaged), the greedy and the
one-episode error (M = 1) and the glimpses on the target. If averaging M episodes helps because the episodes read
different pixels, a narrower policy at evaluation loses that gain while the greedy error stays put.
"""

from __future__ import annotations

import argparse
import json

from omegaconf import OmegaConf

from glimpse import checkpoint
from glimpse.data import GlimpseData, seeded
from glimpse.evaluate import evaluate_model, load_weights
from glimpse.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a RAM run folder written by python -m glimpse.train")
    parser.add_argument("--images", type=int, default=2000, help="validation images scored")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    args = parser.parse_args()
    path = f"{args.run}/checkpoints/{args.checkpoint}.pt"
    state = checkpoint.load(path, map_location="cpu")
    cfg = OmegaConf.create(state["config"])
    cfg.data.eval_limit = args.images
    data = GlimpseData(cfg.data, cfg.seed)
    model = build_model(cfg, data.image_shape, data.classes)
    load_weights(model, state["model"], path)
    trained_std = model.location_net.std.item()

    def score(setting: str) -> None:
        result = evaluate_model(model, data.eval_batches("val", 1000), cfg.trainer.eval_samples,
                                seeded(cfg.seed, "eval", "val"), boxes=data.eval_boxes("val"))
        print(json.dumps({"epoch": state["epoch"], "setting": setting, **{k: round(v, 2) for k, v in result.items()}}))

    score(f"as trained (std {trained_std:.3g}, start {model.eval_start})")
    for std in (0.05, 0.1, 0.2):
        model.location_net.std.fill_(std)
        score(f"std {std} at evaluation")
    model.location_net.std.fill_(trained_std)
    model.eval_start = "random"
    score("random start")


if __name__ == "__main__":
    main()
