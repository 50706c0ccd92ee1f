"""Compare glimpse runs and sweeps: one Markdown table of test errors over seeds, a CSV, and plots.

    python -m glimpse.compare <sweep or run folders...> --out DIR [--paper] [--expect-data NAME[=NOTE]]...
        [--expect-run DATA:MODEL[=NOTE]]...

    python -m glimpse.compare multirun/2026-01-02/10-00-00_paper_table --paper --out results/paper_table
    python -m glimpse.compare multirun/a multirun/b --out cmp --expect-data "cifar10=no data on this machine"

(`glimpse-compare` is the same command.) Every folder holding a `.hydra/` folder, found recursively under
the folders given, is a run (Hydra's single-run and multirun folders alike). A run is finished when it has
a readable `metrics.json` (docs/design.md, "Run folder"); the others are listed under "Failed or unfinished
runs" with the error line of their log when there is one, and are never averaged. Finished runs are grouped
by data set (rows) and model (columns). Where runs of one model on one data set differ in more than the seed (their
`.hydra/config.yaml`, e.g. a sweep over model.glimpses), each setting gets its own column, named by the keys
that differ; keys that do not change a result (glimpse.config.RESULT_NEUTRAL_KEYS: data.root, progress
bars, ...), the device, and keys missing from some of the runs are not compared. Two finished runs of the
same setting and seed count once: the one that finished later (the time of the last record of its
history.jsonl) is used, the other is listed as a duplicate.

Writes into DIR:
    table.md                test error (sampled policy) mean ± sample std over seeds, greedy-policy
                            error, on target (where runs have it: glimpses on the target's box, with
                            chance), details per cell (cost, time, single-run error), failed or
                            unfinished runs
    runs.csv                one line per run (status ok, failed or duplicate)
    error_vs_glimpses.png   test error against the number of glimpses (whole-image models: dashed lines)
    error_vs_macs.png       test error against multiply-accumulates per image (log x)
    error_vs_pixels.png     test error against image pixels read per image (log x)
    curves.png              validation error against training step, from each run's history.jsonl
    curves_minutes.png      the same against training minutes (evaluation excluded): learning per unit of compute
    looking_minutes.png     the greedy policy's glimpses on the target (validation, %) against training minutes,
                            where runs record it (canvases)
    canvas_size.png         the canvas-size curve, where runs on two or more `canvas_mnist<side>` data sets are
                            given (experiments/canvas_size.py): test error, MACs and pixels read per image and
                            training images/s against the canvas side, one line per model; a cell named by
                            --expect-run is marked "not run" at its side

Each file states the command that produced it and the machine. `--paper` adds the published figures
(RAM: Mnih et al., NIPS 2014; DRAW: Gregor et al., 2015) beside the ram and draw columns (without draw
runs, beside dram). The plots need matplotlib (`pip install -e ".[compare]"`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glimpse.config import RESULT_NEUTRAL_KEYS, flatten

# Published test errors (%) on the same tasks. RAM: Mnih, Heess, Graves, Kavukcuoglu, "Recurrent Models of
# Visual Attention", NIPS 2014 (cluttered 100x100 from arXiv:1406.6247v1). DRAW (its read attention as a
# classifier, model=draw): Gregor et al., "DRAW: A Recurrent Neural Network For Image Generation", ICML 2015,
# cluttered 100x100, 8 glimpses.
PAPER = {
    "ram": ("RAM (paper)",
            {"mnist": 1.12, "translated_mnist": 1.20, "cluttered_mnist60": 4.04, "cluttered_mnist100": 10.83}),
    "draw": ("DRAW (paper)", {"cluttered_mnist100": 3.36}),
}
# Where a table has no column of a PAPER model, its figures go beside this model's instead: tables made before
# model=draw existed keep DRAW's figure beside dram, the differentiable glimpses that stood in for it.
PAPER_STAND_INS = {"draw": "dram"}
DATA_ORDER = ["mnist", "translated_mnist", "cluttered_mnist60", "cluttered_mnist100", "fashion_mnist",
              "cluttered_fashion_mnist60", "cifar10"]
MODEL_ORDER = ["ram", "dram", "draw", "soft", "fc", "cnn"]
MARKERS = "osD^v<>ph*"
LINESTYLES = ("-", "--", ":", "-.")
# Figures that runs from before they were recorded lack: a column of the per-cell table each, only where a run has
# them, so tables made before stay as they were (on target has a table of its own, `on_target_table`).
OPTIONAL_DETAILS = {"test_error_single": "one run (M = 1)"}
COLORS = {"ram": "tab:red", "dram": "tab:orange", "draw": "tab:brown", "soft": "tab:blue", "fc": "tab:gray",
          "cnn": "tab:green"}
# Never used to tell settings apart. Besides the result-neutral keys: seed is the replicate axis a cell averages
# over, and device (mostly `auto`) says where a run trained, which the table does not split by.
IGNORED_KEYS = RESULT_NEUTRAL_KEYS | {"seed", "device"}
# A log line that says why a run stopped: a logged error, or the last line of a Python traceback.
ERROR_LINE = re.compile(
    r"\[(ERROR|CRITICAL)\]|^([\w.]+(Error|Exception|Interrupt|Exit))\b|\bKilled\b|CANCELLED|OUT_OF_MEMORY")
HISTORY = "history.jsonl"  # glimpse.train's per-epoch record of a run
FIGURES = {"error_vs_glimpses.png": "test error against glimpses",
           "error_vs_macs.png": "test error against MACs per image",
           "error_vs_pixels.png": "test error against pixels read per image",
           "curves.png": "validation error during training",
           "curves_minutes.png": "validation error against training minutes",
           "looking_minutes.png": "greedy glimpses on the target against training minutes",
           "canvas_size.png": "test error, cost and speed against the canvas side"}
# The canvas-size curve's data sets (conf/data/canvas_mnist<side>.yaml): one digit task, canvases of growing side.
CANVAS_CURVE = re.compile(r"canvas_mnist(\d+)$")


@dataclass
class Run:
    """One run folder: its config and overrides from `.hydra/`, and its metrics.json when it finished."""

    folder: Path
    model: str
    data: str
    seed: int | None
    overrides: list[str]
    config: dict[str, Any]  # .hydra/config.yaml, flattened to dotted keys
    metrics: dict[str, Any] | None  # None: failed or unfinished
    reason: str = ""  # why there is no metrics.json
    varying: tuple[str, ...] = ()  # the config keys that tell this run apart from other runs of its model and data
    duplicate_of: Path | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)  # (training step, validation error) per epoch
    minutes: list[float] = field(default_factory=list)  # training minutes at each point of `curve`, when known
    looking: list[float] = field(default_factory=list)  # val/on_target_greedy at each point of `curve`, when recorded

    @property
    def setting(self) -> str:
        return self.setting_without()

    def setting_without(self, *keys: str) -> str:
        """The setting, e.g. "model.glimpses=8, trainer.epochs=200", leaving out `keys`."""
        return ", ".join(f"{k}={self.config[k]}" for k in self.varying if k not in keys)

    @property
    def column(self) -> str:
        return self.column_without()

    def column_without(self, *keys: str) -> str:
        """The column's name, e.g. "ram (trainer.epochs=200)", leaving `keys` out of the setting."""
        setting = self.setting_without(*keys)
        return f"{self.model} ({setting})" if setting else self.model

    def get(self, key: str) -> Any:
        """A metrics.json value; glimpses falls back to the config's model.glimpses (None: a whole-image model)."""
        value = (self.metrics or {}).get(key)
        return self.config.get("model.glimpses") if value is None and key == "glimpses" else value


@dataclass
class Cell:
    """The finished runs of one (data set, column): one per seed."""

    runs: list[Run]

    def values(self, key: str) -> list[float]:
        return [float(v) for v in (r.get(key) for r in self.runs) if isinstance(v, (int, float))]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def text(self, key: str) -> str:
        """`1.12 ± 0.05 (n=3)`: mean ± sample standard deviation over seeds; one seed: `1.12 (n=1)`."""
        values = self.values(key)
        if not values:
            return "–"
        if len(values) == 1:
            return f"{values[0]:.2f} (n=1)"
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


# ---------------------------------------------------------------------------------------------- arguments

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m glimpse.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Outputs: table.md, runs.csv, {', '.join(FIGURES)}")
    p.add_argument("folders", nargs="+", type=Path,
                   help="sweep folders (multirun/...) or run folders, searched recursively")
    p.add_argument("--out", type=Path, required=True, help="folder for table.md, runs.csv and the plots")
    p.add_argument("--paper", action="store_true",
                   help="add the published RAM (and DRAW) test errors beside ram (and draw)")
    p.add_argument("--expect-data", action="append", default=[], metavar="NAME[=NOTE]",
                   help="a data set row to show even without runs ('not run'), with an optional note; repeatable")
    p.add_argument("--expect-run", action="append", default=[], metavar="DATA:MODEL[=NOTE]",
                   help="a (data set, model) cell to mark 'not run' where it has no runs, with an optional note "
                        "(why: e.g. one epoch takes longer than the budget); repeatable")
    return p.parse_args(argv)


def parse_expected_runs(values: list[str]) -> dict[tuple[str, str], str]:
    """--expect-run's DATA:MODEL[=NOTE] arguments as {(data, model): note}; ValueError on one without a colon."""
    expected = {}
    for value in values:
        cell, _, note = value.partition("=")
        data, colon, model = cell.partition(":")
        if not colon or not data or not model:
            raise ValueError(f"--expect-run: {value!r} is not DATA:MODEL[=NOTE]")
        expected[(data, model)] = note
    return expected


# ------------------------------------------------------------------------------------------------ loading

def find_run_folders(folders: list[Path]) -> list[Path]:
    """Every folder under `folders` (each included) that holds `.hydra/`."""
    found: set[Path] = set()
    for top in folders:
        for dirpath, dirnames, _ in os.walk(top):
            if ".hydra" in dirnames:
                found.add(Path(dirpath).resolve())
                dirnames.clear()  # a run folder holds no further runs
            else:
                dirnames[:] = [d for d in dirnames if d not in (".submitit", "checkpoints")]
    return sorted(found)


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def failure_reason(folder: Path) -> str:
    """Why a run has no metrics.json, as far as its folder tells: the last error line of its logs."""
    last_line = ""
    for log in sorted(folder.glob("*.log")):
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if ERROR_LINE.search(line)]
        if errors:
            return f"{log.name}: {errors[-1]}"
        last_line = lines[-1] if lines else last_line
    reason = "no metrics.json and no error in its log (killed, still running, or stopped by its launcher)"
    if (folder / "checkpoints" / "last.pt").exists():
        reason = "unfinished: no metrics.json; checkpoints/last.pt exists (continue it with trainer.resume=true)"
    if last_line:
        reason += f"; last log line: {last_line}"
    if (folder.parent / ".submitit").is_dir():
        reason += f"; launcher logs in {folder.parent / '.submitit'}"
    return reason


def load_run(folder: Path) -> Run:
    """A run folder's config, overrides and metrics.json (or, without one, why it has none)."""
    overrides = read_yaml(folder / ".hydra" / "overrides.yaml") or []
    config = flatten(read_yaml(folder / ".hydra" / "config.yaml") or {})
    metrics: dict[str, Any] | None = None
    reason = ""
    if (folder / "metrics.json").exists():
        try:
            metrics = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError) as err:
            reason = f"metrics.json unreadable: {err}"
    else:
        reason = failure_reason(folder)
    source = metrics or {}
    return Run(folder=folder, model=str(source.get("model", config.get("model.name", "?"))),
               data=str(source.get("data", config.get("data.name", "?"))), seed=source.get("seed", config.get("seed")),
               overrides=[str(o) for o in overrides], config=config, metrics=metrics, reason=reason)


def history_records(folder: Path) -> list[dict[str, Any]]:
    """Every readable record of a run folder's history.jsonl, as written; [] without one. A line cut short
    (the run killed while writing it) is skipped."""
    try:
        lines = (folder / HISTORY).read_text().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def read_history(folder: Path) -> list[dict[str, Any]]:
    """One record per finished epoch, epochs 1, 2, ..., N, from a run folder's history.jsonl; [] when it is
    missing or lacks an epoch (not the whole run). An epoch recorded twice (a resumed run) counts by its
    last record."""
    last = {r["epoch"]: r for r in history_records(folder)}
    epochs = sorted(last)
    return [last[e] for e in epochs] if epochs == list(range(1, len(epochs) + 1)) else []


def curve_points(folder: Path) -> list[dict[str, Any]]:
    """The history.jsonl records of a run folder that hold a validation error: one per point of its curve."""
    return [r for r in read_history(folder) if "step" in r and "val/error" in r]


def curve_and_minutes(run: Run, points: list[dict[str, Any]] | None = None) -> tuple[list[tuple[int, float]],
                                                                                       list[float]]:
    """The run's validation curve, (step, val/error) at each epoch's end from history.jsonl (or `points`, its
    `curve_points`), and the training minutes (evaluation excluded) at each of its points; minutes [] when a
    record does not say."""
    points = curve_points(run.folder) if points is None else points
    curve = [(int(r["step"]), float(r["val/error"])) for r in points]
    if not all(isinstance(r.get("train_seconds"), (int, float)) for r in points):
        return curve, []
    return curve, [r["train_seconds"] / 60 for r in points]


def read_curves(run: Run) -> None:
    """Fill the run's curve, minutes and looking (val/on_target_greedy, [] unless every epoch records it)."""
    points = curve_points(run.folder)
    run.curve, run.minutes = curve_and_minutes(run, points)
    looking = [r.get("val/on_target_greedy") for r in points]
    run.looking = looking if looking and all(isinstance(v, (int, float)) for v in looking) else []


def minutes_to(run: Run, error: float) -> float | None:
    """Training minutes until the run's validation error first reached `error` (%); None if it never did or its
    history does not say."""
    if not run.minutes:
        return None
    return next((m for (_, e), m in zip(run.curve, run.minutes, strict=True) if e <= error), None)


def minutes_to_paper_table(data_rows: list[str], columns: list[str], cells: dict[tuple[str, str], Cell]) -> list[str]:
    """Per ram cell of a data set the paper reports: the training minutes until validation error first reached the
    paper's test error, per seed; `not reached (best X)` where a run never did. [] when no cell applies."""
    published = PAPER["ram"][1]
    rows = []
    for d in data_rows:
        for c in columns:
            cell = cells.get((d, c))
            if d not in published or cell is None or cell.runs[0].model != "ram" or not cell.runs[0].minutes:
                continue
            per_seed = []
            for run in sorted(cell.runs, key=lambda r: (r.seed is None, r.seed)):
                m = minutes_to(run, published[d])
                best = min(e for _, e in run.curve)
                per_seed.append(f"seed {run.seed}: {m:.1f}" if m is not None
                                else f"seed {run.seed}: not reached (best {best:.2f})")
            rows.append([d, c, f"{published[d]:.2f}", "; ".join(per_seed)])
    return markdown_table(["data set", "column", "paper's error", "training minutes to reach it"], rows) if rows else []


def parse_time(text: Any) -> datetime.datetime | None:
    """An ISO-8601 timestamp as an aware datetime (no offset: UTC); None when `text` is not one."""
    try:
        stamp = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.timezone.utc)


# -------------------------------------------------------------------------------------------- aggregating

def assign_settings(runs: list[Run]) -> None:
    """Name each finished run's setting by the config keys that differ within its (data set, model)."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.data, run.model), []).append(run)
    for group in groups.values():
        shared = set.intersection(*(set(r.config) for r in group)) - IGNORED_KEYS
        varying = tuple(sorted(k for k in shared if len({repr(r.config[k]) for r in group}) > 1))
        for run in group:
            run.varying = varying


def finished_at(run: Run) -> datetime.datetime:
    """When a run finished, for ordering: the time of its history.jsonl's last record (a copied or cloned folder
    keeps it, where file times are the copy's), else metrics.json's modification time."""
    records = history_records(run.folder)
    stamp = parse_time(records[-1].get("time")) if records else None
    if stamp is None:
        stamp = datetime.datetime.fromtimestamp((run.folder / "metrics.json").stat().st_mtime, datetime.timezone.utc)
    return stamp


def drop_duplicates(runs: list[Run]) -> list[Run]:
    """Keep the newest finished run of each (data set, setting, seed) (`finished_at`); mark the others duplicates."""
    newest: dict[tuple[str, str, Any], Run] = {}
    for run in sorted(runs, key=finished_at):
        key = (run.data, run.column, run.seed)
        if key in newest:
            newest[key].duplicate_of = run.folder
        newest[key] = run
    return [r for r in runs if r.duplicate_of is None]


def aggregate(runs: list[Run]) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for run in runs:
        cells.setdefault((run.data, run.column), Cell([])).runs.append(run)
    return cells


def ordered(names: set[str], order: list[str]) -> list[str]:
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def ordered_columns(runs: list[Run], models: set[str] = frozenset()) -> list[str]:
    """The columns of `runs`, by MODEL_ORDER, then `models` that have no run: a column each, named by the model."""
    model_of = {r.column: r.model for r in runs} | {m: m for m in models if m not in {r.model for r in runs}}
    rank = {model: i for i, model in enumerate(ordered(set(model_of.values()), MODEL_ORDER))}
    return sorted(model_of, key=lambda c: (rank[model_of[c]], c))


# ----------------------------------------------------------------------------------------------- writing

def provenance(argv: list[str], runs: list[Run]) -> str:
    """The command, where it ran, and what the runs were trained with (metrics.json's torch, machine, device)."""
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "glimpse.compare", *argv])
    here = f"{platform.processor() or platform.machine()}, {platform.system()}, Python {platform.python_version()}"
    trained = sorted({f"torch {m.get('torch', '?')} on {m.get('machine', '?')} ({m.get('device', '?')})"
                      for m in (r.metrics for r in runs) if m and ("torch" in m or "machine" in m)})
    text = f"Produced by `{command}` on {datetime.date.today()} ({here})."
    return text + (f" Runs trained with {'; '.join(trained)}." if trained else "")


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def error_table(key: str, data_rows: list[str], columns: list[str], cells: dict[tuple[str, str], Cell],
                expected: dict[str, str], paper: bool,
                expected_runs: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Rows: data sets; columns: models (and settings); cells: mean ± std (n) of `key` over seeds."""
    header = ["data set"]
    paper_after: dict[str, list[str]] = {}  # the paper columns to put after a column ("": first)
    if paper:
        for model in PAPER:
            own = ([c for c in columns if c.split(" (")[0] == model]
                   or [c for c in columns if c.split(" (")[0] == PAPER_STAND_INS.get(model)])
            paper_after.setdefault(own[-1] if own else (columns[-1] if columns else ""), []).append(model)
    rows = [[d] for d in data_rows]
    for column in ["", *columns]:  # "": before the first column, where paper columns go when no column fits
        if column:
            header.append(column)
            for d, row in zip(data_rows, rows):
                cell = cells.get((d, column))
                named = d in expected or (d, column.split(" (")[0]) in (expected_runs or {})
                row.append(cell.text(key) if cell else ("not run" if named else "–"))
        for model in paper_after.get(column, []):
            name, numbers = PAPER[model]
            header.append(name)
            for d, row in zip(data_rows, rows):
                row.append(f"{numbers[d]:.2f}" if d in numbers else "–")
    return markdown_table(header, rows)


def details_table(cells: dict[tuple[str, str], Cell], data_rows: list[str], columns: list[str]) -> list[str]:
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    optional = [key for key in OPTIONAL_DETAILS if any(cell.values(key) for cell in cells.values())]
    rows = []
    for d in data_rows:
        for c in columns:
            cell = cells.get((d, c))
            if cell is None:
                continue
            seconds = cell.mean("train_seconds")
            rows.append([d, c, str(len(cell.runs)), ", ".join(str(r.seed) for r in cell.runs), cell.text("test_error"),
                         cell.text("test_error_greedy"), cell.text("val_error_best"), fmt(cell.mean("epochs"), ".0f"),
                         fmt(None if seconds is None else seconds / 60, ".1f"),
                         fmt(cell.mean("train_images_per_second"), ",.0f"), fmt(cell.mean("params"), ",.0f"),
                         fmt(cell.mean("macs_per_image"), ".3g"), fmt(cell.mean("pixels_per_image"), ".1f"),
                         *[cell.text(key) for key in optional]])
    header = ["data set", "model", "runs", "seeds", "test error", "greedy", "best val error", "epochs", "train min",
              "train img/s", "params", "MACs/image", "pixels/image", *[OPTIONAL_DETAILS[key] for key in optional]]
    return markdown_table(header, rows)


def on_target_table(data_rows: list[str], columns: list[str], cells: dict[tuple[str, str], Cell]) -> list[str]:
    """Rows: data sets; columns: the models (and settings) with an on-target figure, then the chance of a uniformly
    random policy on the data set's test canvases; [] when no run has one."""
    columns = [c for c in columns if any(cell.values("on_target_greedy") for (_, c2), cell in cells.items() if c2 == c)]
    if not columns:
        return []
    rows = []
    for d in data_rows:
        row = [d, *[cells[(d, c)].text("on_target_greedy") if (d, c) in cells else "–" for c in columns]]
        chance = [v for (d2, _), cell in cells.items() if d2 == d for v in cell.values("on_target_chance")]
        rows.append([*row, f"{statistics.fmean(chance):.2f}" if chance else "–"])
    return markdown_table(["data set", *columns, "chance"], rows)


def write_table(path: Path, argv: list[str], finished: list[Run], failed: list[Run], duplicates: list[Run],
                expected: dict[str, str], paper: bool, figures: list[str],
                expected_runs: dict[tuple[str, str], str] | None = None) -> None:
    expected_runs = expected_runs or {}
    cells = aggregate(finished)
    data_rows = ordered({r.data for r in finished} | set(expected) | {d for d, _ in expected_runs}, DATA_ORDER)
    columns = ordered_columns(finished, {m for _, m in expected_runs})
    lines = [f"# Comparison of {len(finished)} finished runs", "", provenance(argv, finished + failed), "",
             ("Test error in %, sampled policy (M = trainer.eval_samples runs per image), of the best-validation "
              "checkpoint: mean ± sample standard deviation over seeds (n = seeds). `–`: no run."), ""]
    lines += error_table("test_error", data_rows, columns, cells, expected, paper, expected_runs)
    lines += ["", "## Greedy policy", "", ("Test error in % with the policy's mean locations (deterministic models: "
                                            "the same as above)."), ""]
    lines += error_table("test_error_greedy", data_rows, columns, cells, expected, False, expected_runs)
    looking = on_target_table(data_rows, columns, cells)
    if looking:
        lines += ["", "## On target", "", ("Glimpses 2 .. T of the greedy policy whose centre lies in the box of the "
                                          "target's ink, in % (the first glimpse is not the policy's choice); chance: "
                                          "the same for a uniformly random location. `–`: data without a canvas, "
                                          "or no run."), "", *looking]
    notes = [f"- **{d}**: {note}" for d, note in expected.items() if note]
    notes += [f"- **{d}, {m}**: not run{': ' + note if note else ''}" for (d, m), note in expected_runs.items()
              if not any(d2 == d and c.split(' (')[0] == m for d2, c in cells)]
    if paper:
        notes.append("- Paper: RAM from Mnih et al., NIPS 2014 (cluttered 100x100: arXiv:1406.6247v1); "
                     "DRAW (differentiable attention) from Gregor et al., ICML 2015, cluttered 100x100.")
    reached = minutes_to_paper_table(data_rows, columns, cells) if paper else []
    if reached:
        lines += ["", "## Minutes to the paper's error", "", ("Training minutes (evaluation excluded) until the "
                                                             "validation error first reached the paper's test "
                                                             "error, from each run's history.jsonl."), "", *reached]
    if notes:
        lines += ["", "Notes:", "", *notes]
    lines += ["", "## Per cell", "", *details_table(cells, data_rows, columns)]
    lines += ["", "## Failed or unfinished runs", "", "No metrics.json: never averaged.", ""]
    lines += [f"- `{r.folder}`: {r.model} on {r.data}, seed {r.seed} "
              f"({' '.join(r.overrides) or 'no overrides'}): {r.reason}" for r in failed] or ["None."]
    if duplicates:
        lines += ["", "## Duplicates", "", "Same setting and seed as a newer run, which is the one used:", ""]
        lines += [f"- `{r.folder}` (newer: `{r.duplicate_of}`)" for r in duplicates]
    if figures:
        lines += ["", "## Plots", "", *[f"![{FIGURES[name]}]({name})" for name in figures]]
    path.write_text("\n".join(lines) + "\n")


CSV_KEYS = ["test_error", "test_error_greedy", "test_error_single", "val_error_best", "best_epoch", "epochs",
            "train_seconds", "train_images_per_second", "inference_images_per_second", "params", "macs_per_image",
            "pixels_per_image", "on_target", "on_target_greedy", "on_target_chance", "glimpses", "device", "torch",
            "machine"]


def write_csv(path: Path, argv: list[str], runs: list[Run]) -> None:
    """One line per run; the first line is a `#` comment with the command (pandas: read_csv(comment='#'))."""
    with path.open("w", newline="") as f:
        f.write(f"# {provenance(argv, runs)}\n")
        out = csv.writer(f)
        out.writerow(["folder", "status", "data", "model", "setting", "seed", *CSV_KEYS, "overrides", "reason"])
        for r in sorted(runs, key=lambda r: str(r.folder)):
            status = "failed" if r.metrics is None else ("duplicate" if r.duplicate_of else "ok")
            out.writerow([str(r.folder), status, r.data, r.model, r.setting, r.seed,
                          *[(r.metrics or {}).get(k, "") for k in CSV_KEYS], " ".join(r.overrides), r.reason])


# ---------------------------------------------------------------------------------------------- plotting
# matplotlib is optional (the `compare` extra) and imported here only. Figures are made without pyplot, so
# importing this module changes no global matplotlib state (backend, open figures).

def color(model: str) -> str:
    return COLORS.get(model, "tab:purple")


def subplots(data_rows: list[str], note: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(data_rows), 3.8))
    axes = fig.subplots(1, len(data_rows), squeeze=False)
    fig.text(0.005, 0.005, note, fontsize=5, va="bottom", wrap=True)
    return fig, axes[0]


def save(fig, path: Path, note: str) -> None:
    fig.tight_layout(rect=(0, 0.09, 1, 1))  # room for a provenance note of up to 3 lines
    fig.savefig(path, dpi=110, metadata={"Description": note, "Software": "glimpse.compare"})


def plot_error_against(path: Path, key: str, xlabel: str, cells: dict[tuple[str, str], Cell], data_rows: list[str],
                       note: str, log_x: bool) -> None:
    """One point per (data set, column): mean test error ± std over seeds against the mean of `key`."""
    import matplotlib.ticker

    fig, axes = subplots(data_rows, note)
    for ax, d in zip(axes, data_rows):
        if log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        xs = set()
        for i, ((data, column), cell) in enumerate(sorted(cells.items())):
            x, y = cell.mean(key), cell.mean("test_error")
            if data != d or x is None or y is None:
                continue
            xs.add(x)
            values = cell.values("test_error")
            ax.errorbar([x], [y], yerr=[statistics.stdev(values) if len(values) > 1 else 0.0], capsize=3,
                        marker=MARKERS[i % len(MARKERS)], linestyle="none", color=color(cell.runs[0].model),
                        label=column)
        if log_x and len(xs) == 1 and (x := xs.pop()) > 0:  # one x on a log axis: matplotlib's limits are singular
            ax.set_xlim(x / 2, x * 2)
        ax.set(title=d, xlabel=xlabel, ylabel="test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    save(fig, path, note)


GlimpseLine = tuple[str, list[tuple[float, float, float]]]  # (model, [(glimpses, mean, std)])


def glimpse_lines(cells: dict[tuple[str, str], Cell], data: str) -> tuple[dict[str, GlimpseLine],
                                                                         list[tuple[str, float]]]:
    """The lines of error_vs_glimpses for one data set: {label: (model, [(glimpses, mean, std)])}, and the
    whole-image models' (model, mean). A line joins the columns that differ only in model.glimpses (a sweep);
    columns that differ in anything else (e.g. trainer.epochs) are lines of their own."""
    lines: dict[str, GlimpseLine] = {}
    flat: list[tuple[str, float]] = []
    for (d, _), cell in sorted(cells.items()):
        if d != data:
            continue
        run, values = cell.runs[0], cell.values("test_error")
        glimpses = cell.mean("glimpses")
        if glimpses is None:
            flat.append((run.model, statistics.fmean(values)))
            continue
        label = run.column_without("model.glimpses")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.setdefault(label, (run.model, []))[1].append((glimpses, statistics.fmean(values), std))
    for _, points in lines.values():
        points.sort()
    return lines, flat


def plot_error_against_glimpses(path: Path, cells: dict[tuple[str, str], Cell], data_rows: list[str],
                                note: str) -> None:
    """Glimpse models: test error against glimpses, one line per setting (glimpse sweeps joined); whole-image
    models: dashed lines."""
    fig, axes = subplots(data_rows, note)
    for ax, d in zip(axes, data_rows):
        lines, flat = glimpse_lines(cells, d)
        for model, mean in flat:
            ax.axhline(mean, color=color(model), linestyle="--", label=f"{model} (whole image)")
        for i, (label, (model, points)) in enumerate(lines.items()):
            ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                        marker=MARKERS[i % len(MARKERS)], capsize=3, color=color(model), label=label)
        ax.set(title=d, xlabel="glimpses", ylabel="test error (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path, note)


def plot_curves(path: Path, runs: list[Run], data_rows: list[str], note: str, minutes: bool = False,
                looking: bool = False) -> None:
    """Validation error against training step (or training minutes), one line per run, coloured by model; with
    `looking`, the greedy glimpses on the target (%, linear axis) instead of the error.

    The error axis is logarithmic: runs fall from tens of percent to a few, and what separates them at the
    end (a point or less) would otherwise be a few pixels."""
    import matplotlib.ticker

    fig, axes = subplots(data_rows, note)
    for ax, d in zip(axes, data_rows):
        if not looking:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))  # 1, 2, 3, 5, 10, ...
            ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        columns: dict[str, list[str]] = {}  # model -> its columns: one colour per model, one line style per column
        for run in runs:
            if run.data != d or not run.curve or (minutes and not run.minutes):
                continue
            steps, values = zip(*run.curve)
            values = run.looking if looking else values
            x = run.minutes if minutes else steps
            own = columns.setdefault(run.model, [])
            first = run.column not in own  # the legend names each column once
            if first:
                own.append(run.column)
            ax.plot(x, values, color=color(run.model), alpha=0.7, linewidth=1, marker=".",
                    linestyle=LINESTYLES[own.index(run.column) % len(LINESTYLES)],
                    label=run.column if first else None)
        ax.set(title=d, xlabel="training minutes (evaluation excluded)" if minutes else "training step",
               ylabel="greedy glimpses on the target (%, validation)" if looking else "validation error (%, log)")
        ax.grid(alpha=0.3, which="both")
        if columns:
            ax.legend(fontsize=7)
    save(fig, path, note)


CANVAS_PANELS = (("test_error", "test error (%)", False), ("macs_per_image", "MACs per image (log)", True),
                 ("pixels_per_image", "pixels read per image (log)", True),
                 ("train_images_per_second", "training images/s (log)", True))


def canvas_sides(data_rows: list[str]) -> dict[str, int]:
    """{data set: canvas side} of the canvas-size curve's data sets among `data_rows`."""
    return {d: int(m.group(1)) for d in data_rows if (m := CANVAS_CURVE.match(d))}


def plot_canvas_size(path: Path, cells: dict[tuple[str, str], Cell], expected_runs: dict[tuple[str, str], str],
                     note: str) -> None:
    """The canvas-size curve: one panel per figure of CANVAS_PANELS against the canvas side, one line per column
    (mean over seeds; test error ± std); a cell of --expect-run without runs is an x at the top of each panel,
    labelled "not run"."""
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    sides = canvas_sides(sorted({d for d, _ in cells} | {d for d, _ in expected_runs}))
    columns = ordered_columns([c.runs[0] for (d, _), c in cells.items() if d in sides],
                              {m for d, m in expected_runs if d in sides})
    fig = Figure(figsize=(4.2 * len(CANVAS_PANELS), 3.8))
    axes = fig.subplots(1, len(CANVAS_PANELS))
    fig.text(0.005, 0.005, note, fontsize=5, va="bottom", wrap=True)
    for ax, (key, label, log_y) in zip(axes, CANVAS_PANELS):
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(sides.values())), [str(s) for s in sorted(set(sides.values()))])
        ax.minorticks_off()
        top = blended_transform_factory(ax.transData, ax.transAxes)
        ys = set()
        for i, column in enumerate(columns):
            model = column.split(" (")[0]
            points = sorted((sides[d], cell) for (d, c), cell in cells.items() if c == column and d in sides
                            and cell.mean(key) is not None)
            if points:
                stds = [statistics.stdev(v) if key == "test_error" and len(v := cell.values(key)) > 1 else 0.0
                        for _, cell in points]
                ax.errorbar([x for x, _ in points], [cell.mean(key) for _, cell in points], yerr=stds, capsize=3,
                            marker=MARKERS[i % len(MARKERS)], color=color(model), label=column)
                ys.update(cell.mean(key) for _, cell in points)
            missing = [sides[d] for (d, m) in expected_runs if m == model and d in sides
                       and not any(d2 == d and c == column for d2, c in cells)]
            for x in missing:  # one row per column from the top, so that markers at one side do not overlap
                y = 0.95 - 0.07 * i
                ax.plot([x], [y], marker="x", markersize=7, color=color(model), transform=top, clip_on=False)
                ax.text(x, y, f"{model}: not run  ", transform=top, fontsize=6, ha="right", va="center",
                        color=color(model))
        if log_y and len(ys) == 1 and (y := ys.pop()) > 0:  # one value on a log axis: singular limits
            ax.set_ylim(y / 2, y * 2)
        if log_y:
            ax.set_yscale("log")
        ax.set(xlabel="canvas side (pixels)", ylabel=label)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    save(fig, path, note)


def plot_all(out: Path, finished: list[Run], note: str,
             expected_runs: dict[tuple[str, str], str] | None = None) -> list[str]:
    """The figures of FIGURES into `out` (looking_minutes.png only where a run records on_target, canvas_size.png
    only with two canvas sides of the curve); returns the names of those drawn."""
    expected_runs = expected_runs or {}
    cells = aggregate(finished)
    data_rows = ordered({r.data for r in finished}, DATA_ORDER)
    plot_error_against_glimpses(out / "error_vs_glimpses.png", cells, data_rows, note)
    plot_error_against(out / "error_vs_macs.png", "macs_per_image", "MACs per image (log)", cells, data_rows, note,
                       log_x=True)
    plot_error_against(out / "error_vs_pixels.png", "pixels_per_image", "pixels read per image (log)", cells,
                       data_rows, note, log_x=True)
    plot_curves(out / "curves.png", finished, data_rows, note)
    plot_curves(out / "curves_minutes.png", finished, data_rows, note, minutes=True)
    drawn = [name for name in FIGURES if name not in ("looking_minutes.png", "canvas_size.png")]
    looking = [r for r in finished if r.looking and r.minutes]
    if looking:
        plot_curves(out / "looking_minutes.png", looking, ordered({r.data for r in looking}, DATA_ORDER), note,
                    minutes=True, looking=True)
        drawn.append("looking_minutes.png")
    if len(set(canvas_sides(data_rows + [d for d, _ in expected_runs]).values())) >= 2:
        plot_canvas_size(out / "canvas_size.png", cells, expected_runs, note)
        drawn.append("canvas_size.png")
    return drawn


# ------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    """Compare the runs under the folders of `argv` (the command line's arguments); 0, or 2 on a usage error."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        print(f"glimpse.compare: no such folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    folders = find_run_folders(args.folders)
    if not folders:
        print(f"glimpse.compare: no run folders (folders holding .hydra/) under {', '.join(map(str, args.folders))}",
              file=sys.stderr)
        return 2
    expected = dict(e.split("=", 1) if "=" in e else (e, "") for e in args.expect_data)
    try:
        expected_runs = parse_expected_runs(args.expect_run)
    except ValueError as err:
        print(f"glimpse.compare: {err}", file=sys.stderr)
        return 2

    runs = [load_run(f) for f in folders]
    failed = [r for r in runs if r.metrics is None]
    finished = [r for r in runs if r.metrics is not None]
    assign_settings(finished)
    kept = drop_duplicates(finished)
    duplicates = [r for r in finished if r.duplicate_of is not None]

    for run in kept:
        read_curves(run)
    args.out.mkdir(parents=True, exist_ok=True)
    figures = plot_all(args.out, kept, provenance(argv, kept), expected_runs) if kept else []
    write_table(args.out / "table.md", argv, kept, failed, duplicates, expected, args.paper, figures, expected_runs)
    write_csv(args.out / "runs.csv", argv, runs)
    print(f"glimpse.compare: {len(kept)} finished runs, {len(failed)} failed or unfinished, {len(duplicates)} "
          f"duplicates -> {args.out / 'table.md'}")
    return 0


def cli() -> None:
    """The `glimpse-compare` command."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
