"""The best validation error each run had reached by given training minutes (evaluation excluded).

    python experiments/best_by_minute.py RUN_FOLDER... [--minutes 10 23 28]

The by-minute figures of README's equal-minutes comparison: the same curves and minutes (from each
run's history.jsonl) as glimpse.compare's curves_minutes.png (`curve_and_minutes`), read at fixed minutes.
Prints one line per run: its folder name, test error, greedy test error, training
minutes in all, and minute:best-validation-error pairs ('-' before its first epoch ended).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glimpse.compare import curve_and_minutes, load_run


def best_by_minute(curve: list[tuple[int, float]], minutes: list[float], at: float) -> float | None:
    """The lowest validation error among the points reached within `at` training minutes."""
    reached = [error for (_, error), minute in zip(curve, minutes) if minute <= at]
    return min(reached, default=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--minutes", nargs="+", type=float, default=[10, 23, 28])
    args = parser.parse_args(argv)
    for folder in args.folders:
        run = load_run(folder)
        curve, minutes = curve_and_minutes(run)
        total = f"{minutes[-1]:.1f}" if minutes else "?"
        cells = [(at, best_by_minute(curve, minutes, at)) for at in args.minutes]
        text = " ".join(f"{at:g}:{'-' if best is None else f'{best:.2f}'}" for at, best in cells)
        print(folder.name, run.metrics.get("test_error"), run.metrics.get("test_error_greedy"), total, text)


if __name__ == "__main__":
    main()
