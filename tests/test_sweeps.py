"""Hydra multirun as a user types it: sweep presets, the joblib and submitit launchers, the SLURM preset."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from glimpse.config import CONF_DIR
from tests.conftest import data_root, needs_mnist

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.train_limit=256", "data.eval_limit=128", "trainer.epochs=1", "trainer.eval_samples=2",
        "trainer.progress=false", "trainer.visual_every=0"]


def has_plugin(name: str) -> bool:
    return importlib.util.find_spec(f"hydra_plugins.{name}") is not None


needs_joblib = pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"),
                                  reason="hydra-joblib-launcher not installed (pip install -e '.[joblib]')")
needs_submitit = pytest.mark.skipif(not has_plugin("hydra_submitit_launcher"),
                                    reason="hydra-submitit-launcher not installed (pip install -e '.[slurm]')")


def multirun(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """`python -m glimpse.train -m <args>` into tmp_path/sweep; returns the result and the launcher's pid."""
    env = {**os.environ, "GLIMPSE_DATA": str(data_root()), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "glimpse.train", "-m", *args, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), proc.pid


def job_folders(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/.hydra"))


def writer_pid(run: Path) -> int:
    """The pid of the process that trained the run: TensorBoard's event file is
    events.out.tfevents.<time>.<host>.<pid>.<n>."""
    (event,) = run.glob("events.out.tfevents.*")
    return int(event.name.split(".")[-2])


def check_jobs(sweep: Path, models: list[str]) -> list[Path]:
    """One folder per job, each with its own metrics.json from the model its overrides asked for."""
    runs = job_folders(sweep)
    assert len(runs) == len(models) and len(set(runs)) == len(models)
    for run, model in zip(runs, models):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["model"] == model and 0 <= metrics["test_error"] <= 100
        assert f"model={model}" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    return runs


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)))


def sweeper_params(preset: str) -> dict[str, str]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    return dict(cfg.hydra.sweeper.params)


@pytest.mark.parametrize("preset, runs", [("hard_vs_soft", 24), ("paper_table", 36)])
def test_sweep_presets_run_exactly_the_per_data_set_presets(preset, runs):
    params = sweeper_params(preset)
    presets = [p.strip() for p in params["+experiment@_global_"].split(",")]
    seeds = params["seed"].split(",")
    assert len(presets) * len(seeds) == runs and len(set(presets)) == len(presets)
    for name in presets:  # each job's config is the preset's own (the sweep preset adds nothing else)
        assert composed(f"experiment={preset}", f"+experiment@_global_={name}") == composed(f"experiment={name}")
    if preset == "paper_table":
        settings = {name: composed(f"experiment={name}") for name in presets if name.startswith("ram_")}
        assert {n: (c["model"]["glimpses"], c["sensor"]["patch"], c["sensor"]["scales"], c["sensor"]["resize"])
                for n, c in settings.items()} == {
            "ram_mnist": (6, 8, 1, "area"), "ram_translated60": (8, 12, 3, "bilinear"),
            "ram_cluttered60": (8, 12, 3, "bilinear"), "ram_cluttered100": (8, 12, 4, "bilinear")}


def test_cifar10_preset_sweeps_every_model():
    assert sweeper_params("cifar10_table") == {"model": "ram,soft,dram,draw,fc,cnn", "seed": "0,1,2"}
    for model in ("ram", "soft", "dram", "draw", "fc", "cnn"):
        cfg = composed("experiment=cifar10_table", f"model={model}")
        assert cfg["data"]["name"] == "cifar10" and cfg["model"]["name"] == model


@needs_mnist
def test_sweep_preset_runs_and_compare_reads_it(tmp_path):
    out, _ = multirun(tmp_path, "experiment=hard_vs_soft", "seed=0", "+experiment@_global_=ram_mnist,dram_cluttered60",
                      *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = job_folders(tmp_path / "sweep")
    assert [r.name for r in runs] == ["0_ram_mnist_seed0", "1_dram_cluttered_mnist60_seed0"]
    assert [json.loads((r / "metrics.json").read_text())["data"] for r in runs] == ["mnist", "cluttered_mnist60"]
    done = subprocess.run([sys.executable, "-m", "glimpse.compare", str(tmp_path / "sweep"), "--out",
                           str(tmp_path / "cmp")], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| mnist | " in table and "| cluttered_mnist60 | " in table and "(n=1)" in table


@needs_mnist
@needs_joblib
def test_joblib_launcher_runs_jobs_in_worker_processes(tmp_path):
    out, launcher = multirun(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=ram,dram", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = check_jobs(tmp_path / "sweep", ["ram", "dram"])
    assert launcher not in {writer_pid(r) for r in runs}  # trained in joblib's workers, not in the launcher


@needs_mnist
@needs_submitit
def test_submitit_local_launcher_runs_jobs_in_their_own_processes(tmp_path):
    out, launcher = multirun(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                             "model=ram,dram", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = check_jobs(tmp_path / "sweep", ["ram", "dram"])
    pids = {writer_pid(r) for r in runs}
    assert len(pids) == 2 and launcher not in pids
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))) == 2


@needs_submitit
def test_slurm_preset_keys_reach_sbatch(tmp_path):
    """A stand-in `sbatch` keeps the script submitit writes and refuses the job; `srun` only has to exist."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\nfor a in "$@"; do last="$a"; done\ncp "$last" "$SBATCH_COPY"\n'
                                    'echo "sbatch: error: test stand-in" >&2\nexit 1\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    script = tmp_path / "job.sh"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SBATCH_COPY": str(script)}
    out, _ = multirun(tmp_path, "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                      "hydra.launcher.cpus_per_task=6", "hydra.launcher.gpus_per_node=2", "hydra.launcher.mem_gb=24",
                      "seed=0,1", env=env)
    assert out.returncode != 0 and "test stand-in" in out.stderr  # refused by the stand-in, as intended
    assert script.exists(), out.stderr[-3000:]
    lines = set(script.read_text().splitlines())
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --cpus-per-task=6",
                 "#SBATCH --gpus-per-node=2", "#SBATCH --mem=24GB",
                 "#SBATCH --array=0-1%2"):  # 2 jobs, at most 2 at once
        assert line in lines, script.read_text()


def load_canvas_size():
    spec = importlib.util.spec_from_file_location("canvas_size", ROOT / "experiments" / "canvas_size.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_cell_of_the_canvas_size_curve_composes_with_the_side_and_soft_grid_it_names():
    from glimpse.config import compose_config
    from glimpse.models.soft import grid_locations

    curve = load_canvas_size()
    for side in curve.SIDES:
        for model in curve.MODELS:
            cfg = compose_config(curve.overrides(model, side))
            assert cfg.data.canvas == side and cfg.model.name == model
            assert cfg.data.distractors == round(4 * side**2 / 60**2)  # cluttered_mnist60's density
            if model == "soft":  # the grid keeps 13 to 18 cells a side
                cells = len(grid_locations(side, side, cfg.sensor.patch, cfg.model.stride))
                assert 13**2 <= cells <= 18**2


def test_a_plan_fills_the_minutes_with_epochs_and_marks_the_cells_that_cannot_run(tmp_path, monkeypatch):
    curve = load_canvas_size()
    minutes_per_epoch = {("ram", 60): 0.4, ("soft", 60): 2.5, ("ram", 400): 0.5, ("soft", 400): 900.0}

    def timed(cell: list[str], limit: float) -> tuple[float, int]:  # cell: [experiment=<model>_..., data=..<side>]
        model, side = cell[0].removeprefix("experiment=").split("_")[0], int(cell[1].removeprefix("data=canvas_mnist"))
        return 60 * minutes_per_epoch[model, side], 5

    monkeypatch.setattr(curve, "epoch_seconds", timed)
    plan = curve.plan(10.0, tmp_path, ("ram", "soft"), (60, 400))
    assert [(c["model"], c["side"], c["epochs"]) for c in plan["cells"]] == [
        ("ram", 60, 25), ("soft", 60, 4), ("ram", 400, 20), ("soft", 400, 0)]
    assert plan["cells"][3]["reason"] == "one epoch takes 900 training minutes on one thread"
    assert json.loads((tmp_path / "plan.json").read_text()) == plan
    assert curve.expected(tmp_path) == [
        "--expect-run=canvas_mnist400:soft=one epoch takes 900 training minutes on one thread"]
    assert curve.plan_table(tmp_path).splitlines()[2:] == [
        "| 60 | 0.40 min, 25 epochs | 2.50 min, 4 epochs |",
        "| 400 | 0.50 min, 20 epochs | 900 min: not run |"]


@needs_mnist
def test_the_canvas_size_curve_runs_its_plan_and_compare_draws_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GLIMPSE_DATA", str(data_root()))
    curve = load_canvas_size()
    seconds, timed = curve.epoch_seconds(curve.overrides("ram", 60), limit=3600)
    assert seconds > 0 and timed == curve.STEPS
    cells = [{"model": "ram", "side": side, "data": f"canvas_mnist{side}", "epochs": 1,
              "overrides": [*curve.overrides("ram", side), *TINY]} for side in (60, 100)]
    cells.append({"model": "ram", "side": 400, "data": "canvas_mnist400", "epochs": 0, "reason": "too slow",
                  "overrides": curve.overrides("ram", 400)})
    (tmp_path / "plan.json").write_text(json.dumps({"minutes": 1, "threads": 1, "cells": cells}))
    curve.run(tmp_path, seeds=[0], jobs=2)
    runs = sorted(p.name for p in (tmp_path / "runs").glob("*/metrics.json") for p in [p.parent])
    assert runs == ["ram_100_s0", "ram_60_s0"]
    from glimpse import compare

    assert compare.main([str(tmp_path / "runs"), "--out", str(tmp_path / "cmp"), *curve.expected(tmp_path)]) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "| canvas_mnist400 | not run |" in table and "- **canvas_mnist400, ram**: not run: too slow" in table
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "cmp" / "canvas_size.png").exists()


def test_the_committed_plans_table_is_the_one_its_readme_shows():
    curve = load_canvas_size()
    folder = ROOT / "experiments" / "results" / "canvas_size"
    assert curve.plan_table(folder) in (folder / "README.md").read_text()
