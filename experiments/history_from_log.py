"""Write history.jsonl into run folders trained before glimpse.train wrote one, from their train.log.

    python experiments/history_from_log.py RUN_FOLDER... [--force]
    python experiments/history_from_log.py experiments/results/runs/*

glimpse.compare reads a run's validation curve, training minutes and finish time from its history.jsonl
(one JSON object per finished epoch). Older run folders, such as those kept under experiments/results/runs/,
have only train.log's line at each epoch's end (one line):

    [2026-11-22 23:11:21,204][glimpse.train][INFO] - epoch 1/90: train ce 1.3144, val error 24.68%
        (greedy 32.38%), 6309 images/s

Each such line becomes a record marked `"source": "train.log"`, with the line's figures as it rounds them
(train/loss/ce, val/error, val/error_greedy, train/images_per_second), its timestamp as `time` (the
training machines' clocks ran on UTC), and what follows from them:

    images_seen    epochs x the training images of an epoch: data.train_limit, else the source's training set
                   less its data.val_fraction (glimpse.data.GlimpseData); for a folder without .hydra/, metrics.json's
                   images (train_seconds x train_images_per_second) over its epochs. No batch is assumed skipped
                   (trainer.on_nonfinite=stop never skips one).
    train_seconds  the sum over epochs of an epoch's images over its logged images/s
    step           epochs x ceil(images / trainer.batch_size), as glimpse.train counts them; absent without a config

Fields the log does not have (train/reward, train/lr, ...) are absent. A resumed run's log may repeat an
epoch: its last line counts. A folder that already has history.jsonl is left alone unless --force; one whose
log lacks an epoch, or whose images per epoch the config and metrics.json disagree on, is reported and skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from glimpse.compare import HISTORY
from glimpse.config import flatten

# glimpse.data.SOURCES' training sets
TRAIN_SET_SIZES = {"mnist": 60_000, "fashion_mnist": 60_000, "cifar10": 50_000}
EPOCH_LINE = re.compile(r"^\[(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\].* - epoch (?P<epoch>\d+)/\d+: "
                        r"train ce (?P<ce>\S+), val error (?P<val>[0-9.]+)% \(greedy (?P<greedy>[0-9.]+)%\), "
                        r"(?P<rate>[0-9.]+) images/s\s*$")


def images_per_epoch(config: dict[str, Any], metrics: dict[str, Any]) -> int:
    """The training images of one epoch, from the config where the folder has one, checked against metrics.json."""
    from_metrics = None
    epochs, seconds, rate = (metrics.get(k) for k in ("epochs", "train_seconds", "train_images_per_second"))
    if epochs and seconds and rate:
        from_metrics = round(seconds * rate / epochs)
    size = TRAIN_SET_SIZES.get(config.get("data.source"))
    if size is None or "data.val_fraction" not in config:
        if from_metrics is None:
            raise ValueError("neither .hydra/config.yaml nor metrics.json says how many images an epoch has")
        return from_metrics
    images = size - int(round(config["data.val_fraction"] * size))
    if config.get("data.train_limit"):
        images = min(images, config["data.train_limit"])
    if from_metrics is not None and from_metrics != images:
        raise ValueError(f"the config says {images} images an epoch, metrics.json {from_metrics}")
    return images


def records(log: str, images: int, batch_size: int | None) -> list[dict[str, Any]]:
    """history.jsonl's records for the epoch lines of `log`."""
    last: dict[int, re.Match] = {}
    for line in log.splitlines():
        if match := EPOCH_LINE.match(line):
            last[int(match["epoch"])] = match
    epochs = sorted(last)
    if not epochs or epochs != list(range(1, len(epochs) + 1)):
        raise ValueError(f"its log's epoch lines are not epochs 1..N ({len(epochs)} epochs, "
                         f"the last {max(epochs, default=0)})")
    out, seconds = [], 0.0
    for epoch in epochs:
        match = last[epoch]
        rate = float(match["rate"])
        seconds += images / rate
        stamp = datetime.datetime.strptime(match["time"], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=datetime.timezone.utc)
        record: dict[str, Any] = {"epoch": epoch}
        if batch_size:
            record["step"] = epoch * math.ceil(images / batch_size)
        record.update({"train_seconds": seconds, "images_seen": epoch * images,
                       "time": stamp.isoformat(timespec="seconds")})
        ce = float(match["ce"])
        if math.isfinite(ce):
            record["train/loss/ce"] = ce
        record.update({"train/images_per_second": rate, "val/error": float(match["val"]),
                       "val/error_greedy": float(match["greedy"]), "source": "train.log"})
        out.append(record)
    return out


def convert(folder: Path, force: bool = False) -> str:
    """Write `folder`/history.jsonl from its train.log; returns what was done, for the user."""
    target = folder / HISTORY
    if target.exists() and not force:
        return f"{folder}: has {HISTORY} already (--force replaces it)"
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        config_path = folder / ".hydra" / "config.yaml"
        config = flatten(yaml.safe_load(config_path.read_text()) or {}) if config_path.exists() else {}
        rows = records((folder / "train.log").read_text(), images_per_epoch(config, metrics),
                       config.get("trainer.batch_size"))
    except (OSError, ValueError) as err:
        return f"{folder}: skipped: {err}"
    target.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"{folder}: {len(rows)} epochs -> {target}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders holding train.log and metrics.json")
    parser.add_argument("--force", action="store_true", help=f"replace an existing {HISTORY}")
    args = parser.parse_args(argv)
    done = [convert(folder, args.force) for folder in args.folders]
    print("\n".join(done))
    return 1 if any(": skipped: " in line for line in done) else 0


if __name__ == "__main__":
    sys.exit(main())
