"""Validation figures of short screening runs, as a Markdown table (selection is on validation only).

    python experiments/screening_table.py experiments/results/ram/screening/*/ > experiments/results/ram/screening.md

A row per run folder: the overrides that made it (.hydra/overrides.yaml), its training minutes, and at the
epoch of its best validation error that error, the greedy policy's, the one-episode error (M = 1) and the
share of glimpses 2..T on the target (sampled, greedy; chance), all from history.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml


def row(folder: Path) -> str:
    overrides = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text())
    setting = " ".join(o for o in overrides if not o.startswith(("trainer.progress", "trainer.visual_every",
                                                                     "hydra.")))
    history = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    best = min((r for r in history if "val/error" in r), key=lambda r: r["val/error"])  # validated epochs
    planned = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["trainer"]["epochs"]
    last = history[-1]["epoch"]
    epochs = f"{best['epoch']}/{last}" + (f" (stopped; of {planned})" if last < planned else "")

    def cell(key: str) -> str:
        value = best.get(key)
        return "–" if value is None else f"{value:.2f}" if "error" in key else f"{value:.1f}"

    return (f"| `{setting}` | {history[-1]['train_seconds'] / 60:.1f} | {epochs} | "
            f"{cell('val/error')} | {cell('val/error_greedy')} | {cell('val/error_single')} | "
            f"{cell('val/on_target')} | {cell('val/on_target_greedy')} | {cell('val/on_target_chance')} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    args = parser.parse_args()
    print("| setting | train min | best epoch | val error | greedy | M = 1 | on target | on target (greedy) | chance |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder in args.runs:
        print(row(folder))


if __name__ == "__main__":
    main()
