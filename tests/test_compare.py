"""glimpse.compare on synthetic sweep folders: table cells, failed runs, settings, curves, CSV and plots; and on the
run folders kept in the repository, whose committed comparisons it re-makes."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from glimpse import compare

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "experiments" / "results" / "runs"
PNGS = ("error_vs_glimpses.png", "error_vs_macs.png", "error_vs_pixels.png", "curves.png", "curves_minutes.png")


def load_script(name: str):
    """experiments/<name>.py, a script rather than a module of the package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# (model, data) -> test errors of seeds 0, 1, ...; glimpse models have glimpses, whole-image ones not.
ERRORS = {
    ("ram", "mnist"): [1.0, 1.1, 1.3],
    ("ram", "cluttered_mnist60"): [4.0, 5.0, 4.5],
    ("soft", "mnist"): [1.5, 1.7],
    ("soft", "cluttered_mnist60"): [6.25, 6.75, 7.0],
    ("fc", "mnist"): [1.8],
}
GLIMPSES = {"ram": 6, "soft": 6, "fc": None}
FINISHED = sum(len(errors) for errors in ERRORS.values())  # the failed run's folder is sweep/<FINISHED>


def make_run(folder: Path, model: str, data: str, seed: int, error: float | None, glimpses: int | None = 6,
             overrides: list[str] | None = None, history: bool = True, log: str = "",
             finished: str = "2026-01-01T10:01:00+00:00") -> Path:
    """A run folder as glimpse.train writes it; error=None: no metrics.json (failed); `finished`: the time of
    history.jsonl's last record."""
    (folder / ".hydra").mkdir(parents=True)
    model_cfg = {"name": model, **({"glimpses": glimpses} if glimpses else {})}
    config = {"data": {"name": data, "root": "${oc.env:GLIMPSE_DATA,data}"}, "model": model_cfg,
              "trainer": {"epochs": 2, "progress": False}, "seed": seed, "device": "auto"}
    overrides = overrides if overrides is not None else [f"model={model}", f"data={data}", f"seed={seed}"]
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "train.log").write_text(log or "[2026-01-01 10:00:00,000][glimpse.train][INFO] - epoch 1/2: ...\n")
    if history:
        # two epochs of 30,000 images: 40 s and 20 s, the 60 s of metrics.json below
        records = [{"epoch": 1, "step": 10, "train_seconds": 40.0, "images_seen": 30_000,
                    "time": "2026-01-01T10:00:40+00:00", "train/loss/ce": 1.5, "train/images_per_second": 750.0,
                    "val/error": 50.0 + seed, "val/error_greedy": 60.0 + seed},
                   {"epoch": 2, "step": 20, "train_seconds": 60.0, "images_seen": 60_000, "time": finished,
                    "train/loss/ce": 0.5, "train/images_per_second": 1500.0, "val/error": 10.0 + seed,
                    "val/error_greedy": 20.0 + seed}]
        (folder / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if error is not None:
        metrics = {"model": model, "data": data, "seed": seed, "test_error": error, "test_error_greedy": error + 1.0,
                   "val_error_best": error - 0.5, "epochs": 2, "train_seconds": 60.0, "train_images_per_second": 1000.0,
                   "params": 1000, "macs_per_image": 1e6 if glimpses else 3e6,
                   "pixels_per_image": 64.0 if glimpses else 784.0, "glimpses": glimpses, "device": "cpu",
                   "torch": "2.9.0", "machine": "x86_64"}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 models x 2 data sets x 2-3 seeds, a one-seed fc run, and a failed run whose log ends in an error."""
    root = tmp_path / "multirun" / "sweep"
    n = 0
    for (model, data), errors in ERRORS.items():
        for seed, error in enumerate(errors):
            make_run(root / str(n), model, data, seed, error, GLIMPSES[model])
            n += 1
    make_run(root / str(n), "ram", "mnist", 7, None,
             log="[2026-01-01 10:00:00,000][glimpse.train][INFO] - epoch 1/2: ...\n"
             "Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\n"
             "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    return root


def table_rows(text: str, title: str | None = None) -> dict[str, dict[str, str]]:
    """The first Markdown table after `title` (None: the first table) as {row name: {column: cell}}."""
    if title:
        text = text.split(title, 1)[1]
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    header, *rows = ([c.strip() for c in line.strip("|").split("|")] for line in lines[start:end])
    return {cells[0]: dict(zip(header, cells)) for cells in rows[1:]}  # rows[0]: the | --- | line


CELL = re.compile(r"^(?P<mean>[\d.]+)(?: ± (?P<std>[\d.]+))? \(n=(?P<n>\d+)\)$")


def parse_cell(cell: str) -> tuple[float, float | None, int]:
    m = CELL.match(cell)
    assert m, f"not a 'mean ± std (n=N)' cell: {cell!r}"
    return float(m["mean"]), (float(m["std"]) if m["std"] else None), int(m["n"])


def assert_cells(rows: dict[str, dict[str, str]], offset: float = 0.0) -> None:
    for (model, data), errors in ERRORS.items():
        mean, std, n = parse_cell(rows[data][model])
        assert n == len(errors)
        assert mean == pytest.approx(statistics.fmean(errors) + offset, abs=0.005)
        if len(errors) == 1:
            assert std is None  # one seed: no ±
        else:
            assert std == pytest.approx(statistics.stdev(errors), abs=0.005)


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_table_cells_failed_runs_csv_and_plots(sweep, tmp_path):
    out = tmp_path / "cmp"
    note = "not available on this machine (no data, no internet)"
    assert compare.main([str(sweep.parent), "--out", str(out), "--paper", "--expect-data", f"cifar10={note}"]) == 0
    text = (out / "table.md").read_text()

    rows = table_rows(text)
    assert_cells(rows)
    assert rows["mnist"]["ram"] == "1.13 ± 0.15 (n=3)"  # the failed ram/mnist run is not averaged
    assert rows["mnist"]["fc"] == "1.80 (n=1)"
    assert rows["cluttered_mnist60"]["fc"] == "–"
    assert rows["cifar10"]["ram"] == "not run" and note in text
    assert rows["mnist"]["RAM (paper)"] == "1.12" and rows["cluttered_mnist60"]["RAM (paper)"] == "4.04"
    assert list(rows["mnist"]) == ["data set", "ram", "RAM (paper)", "soft", "fc", "DRAW (paper)"]
    assert_cells(table_rows(text, "## Greedy policy"), offset=1.0)
    assert "## On target" not in text and "M = 1" not in text  # runs without those figures: no empty columns

    failed = text.split("## Failed or unfinished runs", 1)[1]
    assert str(sweep / str(FINISHED)) in failed and "RuntimeError: CUDA out of memory" in failed
    assert "python -m glimpse.compare" in text and "torch 2.9.0 on x86_64" in text

    with (out / "runs.csv").open() as f:
        assert f.readline().startswith("# Produced by `python -m glimpse.compare")
        runs = list(csv.DictReader(f))
    assert len(runs) == FINISHED + 1 and sum(r["status"] == "failed" for r in runs) == 1
    assert {r["status"] for r in runs} == {"ok", "failed"}
    failed_row = next(r for r in runs if r["status"] == "failed")
    assert failed_row["test_error"] == "" and "CUDA out of memory" in failed_row["reason"]

    for name in PNGS:
        assert_png(out / name)
        assert f"]({name})" in text


def test_command_line_writes_the_same_table(sweep, tmp_path):
    out = tmp_path / "cli"
    done = subprocess.run([sys.executable, "-m", "glimpse.compare", str(sweep), "--out", str(out)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    text = (out / "table.md").read_text()
    assert_cells(table_rows(text))
    assert "RAM (paper)" not in text and f"--out {out}" in text
    for name in PNGS:
        assert_png(out / name)

    bad = subprocess.run([sys.executable, "-m", "glimpse.compare", str(tmp_path / "nowhere"), "--out", str(out)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "nowhere" in bad.stderr


def test_curves_and_minutes_come_from_history_jsonl(sweep):
    run = compare.load_run(sweep / "1")  # ram, mnist, seed 1
    curve, minutes = compare.curve_and_minutes(run)
    assert curve == [(10, 51.0), (20, 11.0)]  # (step, val/error) at each epoch's end
    assert minutes == pytest.approx([40 / 60, 1.0])  # train_seconds: evaluation excluded


def test_history_counts_each_epoch_once_and_only_a_whole_run(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    record = lambda epoch, error: json.dumps({"epoch": epoch, "step": 10 * epoch, "val/error": error})  # noqa: E731
    # resumed after epoch 2's record was written: epoch 2 again; then killed while writing epoch 4's
    (folder / "history.jsonl").write_text("\n".join([record(1, 50.0), record(2, 12.0), record(2, 11.0), record(3, 9.0),
                                                     '{"epoch": 4, "st']))
    assert [(r["epoch"], r["val/error"]) for r in compare.read_history(folder)] == [(1, 50.0), (2, 11.0), (3, 9.0)]
    (folder / "history.jsonl").write_text(record(2, 11.0) + "\n")  # epoch 1 missing: not the whole run
    assert compare.read_history(folder) == []
    assert compare.read_history(tmp_path / "nowhere") == []
    no_seconds = compare.Run(folder, "ram", "mnist", 0, [], {}, None)
    (folder / "history.jsonl").write_text(record(1, 50.0) + "\n")
    assert compare.curve_and_minutes(no_seconds) == ([(10, 50.0)], [])  # a curve, but no minutes to plot it at


def test_best_validation_by_training_minute(sweep, capsys):
    """experiments/best_by_minute.py reads compare's curve at fixed minutes: the best error reached by then."""
    best_by_minute = load_script("best_by_minute")
    curve, minutes = compare.curve_and_minutes(compare.load_run(sweep / "1"))
    assert minutes == pytest.approx([40 / 60, 1.0])
    assert best_by_minute.best_by_minute(curve, minutes, 0.5) is None  # no epoch had ended
    assert best_by_minute.best_by_minute(curve, minutes, 0.7) == curve[0][1]
    assert best_by_minute.best_by_minute(curve, minutes, 2.0) == min(error for _, error in curve)
    best_by_minute.main([str(sweep / "1"), "--minutes", "0.5", "2"])
    assert capsys.readouterr().out.split()[-2:] == ["0.5:-", f"2:{min(error for _, error in curve):.2f}"]


def test_a_run_from_before_history_jsonl_gets_one_from_its_train_log(tmp_path):
    # as in experiments/results/runs/: config, metrics.json and train.log only; the run was resumed in epoch 2
    line = ("[2026-01-01 10:0{0}:00,000][glimpse.train][INFO] - epoch {0}/2: train ce 0.5, val error {1:.2f}% "
            "(greedy 60.00%), {2:.0f} images/s")
    log = "\n".join([line.format(1, 50.0, 750), "[..][glimpse.train][INFO] - resuming from epoch 2",
                     line.format(2, 12.0, 1400), line.format(2, 11.0, 1500), ""])
    run = make_run(tmp_path / "kept", "ram", "mnist", 0, 1.0, history=False, log=log)
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["data"].update(source="mnist", val_fraction=0.1, train_limit=30_000)
    config["trainer"]["batch_size"] = 128
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    history_from_log = load_script("history_from_log")

    assert history_from_log.main([str(run)]) == 0
    records = compare.read_history(run)
    assert [r["source"] for r in records] == ["train.log", "train.log"]
    assert [r["time"] for r in records] == ["2026-01-01T10:01:00+00:00", "2026-01-01T10:02:00+00:00"]
    assert [r["images_seen"] for r in records] == [30_000, 60_000]
    assert "train/lr" not in records[0]  # the log does not say
    steps = -(-30_000 // 128)  # as glimpse.train counts them
    curve, minutes = compare.curve_and_minutes(compare.load_run(run))
    assert curve == [(steps, 50.0), (2 * steps, 11.0)]  # a resumed epoch: its last line counts
    assert minutes == pytest.approx([40 / 60, 1.0])  # 30,000 images at 750, then at 1,500 images/s
    assert "already" in history_from_log.convert(run)  # converted once; --force to convert again

    (run / "history.jsonl").unlink()
    (run / "train.log").write_text(line.format(2, 11.0, 1500))  # epoch 1 missing: not the whole run
    assert history_from_log.main([str(run)]) == 1 and not (run / "history.jsonl").exists()


def test_every_committed_run_folder_has_its_whole_history():
    folders = sorted(path.parent for path in RUNS.glob("*/metrics.json"))
    assert folders
    for folder in folders:
        epochs = json.loads((folder / "metrics.json").read_text())["epochs"]
        records = compare.read_history(folder)
        assert [r["epoch"] for r in records] == list(range(1, epochs + 1)), folder
        # written by training throughout, or converted from train.log throughout
        assert len({r.get("source") for r in records}) == 1, folder
        if (folder / ".hydra").is_dir():  # a run glimpse.compare finds: curves against steps and minutes
            curve, minutes = compare.curve_and_minutes(compare.load_run(folder))
            assert len(curve) == len(minutes) == epochs, folder


@pytest.mark.parametrize("made", sorted((ROOT / "experiments" / "results").glob("*/table.md")),
                         ids=lambda p: p.parent.name)
def test_the_committed_comparisons_are_remade_from_the_committed_runs(made, tmp_path, monkeypatch):
    # Each table.md under experiments/results/ names the command that made it, over run folders kept in the
    # repository (experiments/results/runs/): run again, it gives the same table, its provenance line aside.
    command = re.search(r"Produced by `python -m glimpse.compare (.*?)` on ", made.read_text())
    if command is None:
        pytest.skip("not a glimpse.compare table")
    args = shlex.split(command[1])
    args[args.index("--out") + 1] = str(tmp_path)
    monkeypatch.chdir(ROOT)
    drawn = [name for name in compare.FIGURES if (made.parent / name).exists()]
    monkeypatch.setattr(compare, "plot_all", lambda *args, **kwargs: drawn)  # the table only
    assert compare.main(args) == 0
    def body(path: Path) -> list[str]:
        return [line for line in path.read_text().splitlines() if not line.startswith("Produced by")]

    assert body(tmp_path / "table.md") == body(made)


def test_where_runs_measure_their_looking_a_table_shows_it_beside_chance(tmp_path):
    root = tmp_path / "runs"
    looking = {  # (model, data, seed) -> metrics.json's figures; None: a run from before they were recorded
        ("ram", "cluttered_mnist60", 0): {"on_target_greedy": 40.0, "on_target_chance": 8.0},
        ("ram", "cluttered_mnist60", 1): {"on_target_greedy": 50.0, "on_target_chance": 8.0},
        ("ram", "mnist", 0): {"on_target_greedy": None, "on_target_chance": None},  # no canvas: nothing to find
        ("soft", "cluttered_mnist60", 0): {"on_target_greedy": None, "on_target_chance": None},  # no glimpses moved
        ("fc", "mnist", 0): None,
    }
    for (model, data, seed), figures in looking.items():
        folder = make_run(root / f"{model}_{data}_{seed}", model, data, seed, 2.0 + seed, GLIMPSES[model])
        if figures is not None:
            metrics = json.loads((folder / "metrics.json").read_text())
            metrics.update(test_error_single=3.0 + seed, on_target=None if figures["on_target_greedy"] is None
                           else figures["on_target_greedy"] - 5, **figures)
            (folder / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "cmp"
    assert compare.main([str(root), "--out", str(out)]) == 0
    text = (out / "table.md").read_text()
    rows = table_rows(text, "## On target")
    assert rows["cluttered_mnist60"] == {"data set": "cluttered_mnist60", "ram": "45.00 ± 7.07 (n=2)", "chance": "8.00"}
    assert rows["mnist"] == {"data set": "mnist", "ram": "–", "chance": "–"}  # soft and fc: no column
    per_cell = text.split("## Per cell", 1)[1]
    assert "| one run (M = 1) |" in per_cell and "| 3.50 ± 0.71 (n=2) |" in per_cell  # ram's single-run error
    with (out / "runs.csv").open() as f:
        f.readline()
        runs = {(r["model"], r["data"], r["seed"]): r for r in csv.DictReader(f)}
    assert runs["ram", "cluttered_mnist60", "1"]["on_target_greedy"] == "50.0"
    assert runs["ram", "cluttered_mnist60", "1"]["on_target"] == "45.0"
    assert runs["ram", "mnist", "0"]["on_target_greedy"] == runs["fc", "mnist", "0"]["on_target_greedy"] == ""


def test_settings_that_differ_get_their_own_columns_and_duplicates_count_once(tmp_path):
    root = tmp_path / "runs"
    for seed, (g4, g8) in enumerate([(3.0, 2.0), (3.5, 2.5)]):
        make_run(root / f"g4_{seed}", "ram", "mnist", seed, g4, glimpses=4)
        make_run(root / f"g8_{seed}", "ram", "mnist", seed, g8, glimpses=8)
    # same setting and seed as g8_0, and finished later
    make_run(root / "g8_0_again", "ram", "mnist", 0, 2.1, glimpses=8, finished="2026-01-02T10:00:00+00:00")
    unfinished = make_run(root / "unfinished", "ram", "mnist", 5, None, glimpses=8,
                          log="[..][glimpse.train][INFO] - epoch 3/90\n")
    (unfinished / "checkpoints").mkdir()
    (unfinished / "checkpoints" / "last.pt").write_bytes(b"")
    out = tmp_path / "cmp"
    assert compare.main([str(root), "--out", str(out)]) == 0
    text = (out / "table.md").read_text()
    row = table_rows(text)["mnist"]
    assert parse_cell(row["ram (model.glimpses=4)"]) == (pytest.approx(3.25), pytest.approx(0.35, abs=0.005), 2)
    assert parse_cell(row["ram (model.glimpses=8)"]) == (pytest.approx(2.3), pytest.approx(0.28, abs=0.005), 2)
    assert "## Duplicates" in text and str(root / "g8_0") in text.split("## Duplicates", 1)[1]
    failed = text.split("## Failed or unfinished runs", 1)[1]
    assert str(unfinished) in failed and "trainer.resume=true" in failed and "epoch 3/90" in failed


def test_of_two_runs_of_one_setting_and_seed_the_later_finished_counts_even_in_a_copy(tmp_path):
    # copied or cloned folders carry the copy's file times; history.jsonl's last time says which run finished last
    later = make_run(tmp_path / "runs" / "a", "ram", "mnist", 0, 2.0, finished="2026-01-02T10:00:00Z")
    earlier = make_run(tmp_path / "runs" / "b", "ram", "mnist", 0, 3.0, finished="2026-01-02T09:00:00+00:00")
    os.utime(earlier / "metrics.json", (time.time() + 60, time.time() + 60))  # copied last
    runs = [compare.load_run(f) for f in (later, earlier)]
    compare.assign_settings(runs)
    assert [r.folder for r in compare.drop_duplicates(runs)] == [later]
    assert runs[1].duplicate_of == later


def test_without_history_jsonl_the_later_metrics_json_counts(tmp_path):
    first = make_run(tmp_path / "runs" / "a", "ram", "mnist", 0, 2.0, history=False)
    second = make_run(tmp_path / "runs" / "b", "ram", "mnist", 0, 3.0, history=False)
    os.utime(first / "metrics.json", (time.time() + 60, time.time() + 60))
    runs = [compare.load_run(f) for f in (first, second)]
    compare.assign_settings(runs)
    assert [r.folder for r in compare.drop_duplicates(runs)] == [first]
    assert compare.curve_and_minutes(runs[0]) == ([], [])  # no history: no curve to plot


def test_a_glimpse_sweep_is_one_line_and_a_longer_budget_another(tmp_path):
    root = tmp_path / "runs"
    for glimpses, error in ((4, 3.0), (8, 2.0)):
        make_run(root / f"g{glimpses}", "ram", "mnist", 0, error, glimpses=glimpses)
    longer = make_run(root / "g8_longer", "ram", "mnist", 0, 1.5, glimpses=8)
    config = yaml.safe_load((longer / ".hydra" / "config.yaml").read_text())
    config["trainer"]["epochs"] = 20
    (longer / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    make_run(root / "fc", "fc", "mnist", 0, 1.8, glimpses=None)
    finished = [compare.load_run(f) for f in compare.find_run_folders([root])]
    compare.assign_settings(finished)
    lines, flat = compare.glimpse_lines(compare.aggregate(finished), "mnist")
    assert flat == [("fc", 1.8)]
    sweep, longer_line = sorted(lines.values(), key=lambda line: len(line[1]), reverse=True)
    assert [(g, e) for g, e, _ in sweep[1]] == [(4, 3.0), (8, 2.0)]  # joined across model.glimpses
    assert [(g, e) for g, e, _ in longer_line[1]] == [(8, 1.5)]  # trainer.epochs=20: a line of its own
    assert len(lines) == 2 and any("trainer.epochs=20" in label for label in lines)


def test_with_paper_the_table_gives_the_minutes_until_validation_reached_the_papers_error(tmp_path):
    fast = make_run(tmp_path / "runs" / "fast", "ram", "cluttered_mnist60", 0, 3.5)
    records = [json.loads(line) for line in (fast / "history.jsonl").read_text().splitlines()]
    records[1]["val/error"] = 3.9  # below the paper's 4.04 after 60 s
    (fast / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    make_run(tmp_path / "runs" / "slow", "ram", "cluttered_mnist60", 1, 9.0)  # best validation 11.0

    assert compare.main([str(tmp_path / "runs"), "--paper", "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "## Minutes to the paper's error" in table
    assert "| cluttered_mnist60 | ram | 4.04 | seed 0: 1.0; seed 1: not reached (best 11.00) |" in table


def test_runs_that_record_looking_get_a_plot_of_it_against_minutes(tmp_path):
    pytest.importorskip("matplotlib")
    for seed in (0, 1):
        run = make_run(tmp_path / "runs" / f"s{seed}", "ram", "cluttered_mnist60", seed, 5.0)
        records = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
        for record, looking in zip(records, (20.0, 60.0), strict=True):
            record["val/on_target_greedy"] = looking
        (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "looking_minutes.png").stat().st_size > 0
    assert "(looking_minutes.png)" in (tmp_path / "out" / "table.md").read_text()
    run = compare.load_run(tmp_path / "runs" / "s0")
    compare.read_curves(run)
    assert run.looking == [20.0, 60.0] and run.minutes == [40 / 60, 1.0]


def test_the_canvas_size_curve_plots_every_side_and_says_which_cells_did_not_run(tmp_path):
    pytest.importorskip("matplotlib")
    root = tmp_path / "runs"
    for side, error in ((60, 4.0), (100, 6.0), (200, 9.0)):
        make_run(root / f"ram_{side}", "ram", f"canvas_mnist{side}", 0, error)
    make_run(root / "soft_60", "soft", "canvas_mnist60", 0, 5.0)
    why = "one epoch takes 90 training minutes on one thread"
    out = tmp_path / "cmp"
    assert compare.main([str(root), "--out", str(out), f"--expect-run=canvas_mnist200:soft={why}",
                         "--expect-run=canvas_mnist400:soft", "--expect-run=canvas_mnist400:ram"]) == 0
    text = (out / "table.md").read_text()
    rows = table_rows(text)
    assert rows["canvas_mnist200"] == {"data set": "canvas_mnist200", "ram": "9.00 (n=1)", "soft": "not run"}
    assert rows["canvas_mnist400"] == {"data set": "canvas_mnist400", "ram": "not run", "soft": "not run"}
    assert rows["canvas_mnist100"]["soft"] == "–"  # not named: no run, and no word on why
    assert f"- **canvas_mnist200, soft**: not run: {why}" in text
    assert "(canvas_size.png)" in text and (out / "canvas_size.png").stat().st_size > 0
    assert compare.canvas_sides(["mnist", "canvas_mnist400", "canvas_mnist60"]) == {"canvas_mnist400": 400,
                                                                                      "canvas_mnist60": 60}


def test_an_expected_run_without_a_model_is_refused_in_one_line(tmp_path, capsys):
    make_run(tmp_path / "runs" / "r", "ram", "mnist", 0, 1.0)
    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--expect-run=canvas_mnist400"]) == 2
    assert capsys.readouterr().err.strip() == (
        "glimpse.compare: --expect-run: 'canvas_mnist400' is not DATA:MODEL[=NOTE]")
