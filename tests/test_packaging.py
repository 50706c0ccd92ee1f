"""glimpse installed as a user installs it: a plain wheel carries the configs, its console scripts work from any
folder, and a user's own config folder adds presets through Hydra's search path without editing the package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from glimpse.config import CONF_DIR, check_overrides, choices, compose_config
from glimpse.errors import UserError
from tests.conftest import data_root, needs_mnist

ROOT = Path(__file__).resolve().parents[1]
BIN = "Scripts" if os.name == "nt" else "bin"
TINY = ["trainer.epochs=1", "data.train_limit=256", "data.eval_limit=200", "trainer.progress=false",
        "trainer.eval_samples=2", "trainer.visual_every=0"]

# A user's preset, kept outside the package: picks package groups and sets values of its own.
USER_PRESET = """\
# @package _global_
defaults:
  - override /data: mnist
  - override /model: ram

model:
  glimpses: 2
  hidden: 64
trainer:
  batch_size: 64
"""


def run(*cmd: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLIMPSE_DATA": str(data_root()), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the checkout must not reach the installed copy's imports
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, (out.args, out.stdout[-2000:], out.stderr[-3000:])
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a clean copy of the sources: a stale build/ in the checkout could otherwise
    supply files the packaging configuration forgets."""
    src = tmp_path_factory.mktemp("src")
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *ROOT.glob("LICEN[CS]E*")]:
        shutil.copy2(path, src)
    for folder in ("glimpse", "conf"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    ok(run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", out, src, cwd=out))
    (built,) = out.glob("glimpse-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel (not editable) and reading this environment's packages.

    The dependencies come through a .pth file naming this environment's site-packages folders: a plain path line,
    so the .pth files in those folders, among them the editable install of the checkout, stay unread."""
    env = tmp_path_factory.mktemp("venv")
    ok(run(sys.executable, "-m", "venv", "--without-pip", env, cwd=env))
    python = env / BIN / "python"
    # Before the .pth file: pip would otherwise take this environment's glimpse for an installed one.
    ok(run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel,
           cwd=env))
    site = ok(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=env)).stdout.strip()
    ours = [sysconfig.get_paths()[k] for k in ("purelib", "platlib")] + [p for p in sys.path if p.endswith("-packages")]
    (Path(site) / "dependencies.pth").write_text("".join(f"{p}\n" for p in dict.fromkeys(ours)))
    return env


@pytest.fixture
def user_conf(tmp_path: Path) -> Path:
    """A user's config folder: my_conf/experiment/tiny.yaml."""
    (tmp_path / "my_conf" / "experiment").mkdir(parents=True)
    (tmp_path / "my_conf" / "experiment" / "tiny.yaml").write_text(USER_PRESET)
    return tmp_path / "my_conf"


def test_the_wheel_carries_every_config_and_the_console_scripts(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    yamls = {f"glimpse/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert {"glimpse/conf/config.yaml", "glimpse/conf/experiment/ram_mnist.yaml"} <= yamls <= names
    for script in ("train", "evaluate", "visualize", "bench", "compare"):
        assert f"glimpse-{script} = glimpse.{script}:cli" in entry_points


def test_the_fresh_environment_imports_the_installed_copy_not_the_checkout(venv: Path, tmp_path: Path) -> None:
    out = ok(run(venv / BIN / "python", "-c", "import glimpse.config as c; print(c.__file__); print(c.CONF_DIR)",
                 cwd=tmp_path))
    module, conf = (Path(line).resolve() for line in out.stdout.splitlines())
    assert module.is_relative_to(venv.resolve()) and conf.is_relative_to(venv.resolve())
    assert (conf / "config.yaml").is_file()


@needs_mnist
def test_glimpse_train_trains_from_any_folder(venv: Path, tmp_path: Path) -> None:
    ok(run(venv / BIN / "glimpse-train", *TINY, "hydra.run.dir=run", cwd=tmp_path))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["test_error"] <= 100


@pytest.mark.parametrize("script", ["glimpse-evaluate", "glimpse-visualize", "glimpse-bench", "glimpse-compare"])
def test_every_console_script_answers_help(script: str, venv: Path, tmp_path: Path) -> None:
    if script == "glimpse-compare" and not (ROOT / "glimpse" / "compare.py").exists():
        pytest.skip("glimpse/compare.py not written yet")
    assert "usage:" in ok(run(venv / BIN / script, "--help", cwd=tmp_path)).stdout


@needs_mnist
def test_a_users_preset_folder_joins_through_hydra_searchpath(venv: Path, user_conf: Path, tmp_path: Path) -> None:
    searchpath = f"hydra.searchpath=[file://{user_conf}]"
    ok(run(venv / BIN / "python", "-m", "glimpse.train", searchpath, "experiment=tiny", *TINY, "hydra.run.dir=run",
           cwd=tmp_path))
    used = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert (used["model"]["glimpses"], used["model"]["hidden"], used["trainer"]["batch_size"]) == (2, 64, 64)
    assert (tmp_path / "run" / "metrics.json").exists()

    # A name in neither folder is still one line, which lists the user's presets beside the package's.
    out = run(venv / BIN / "python", "-m", "glimpse.train", searchpath, "experiment=tiny2", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert "experiment='tiny2'" in lines[0] and "tiny" in lines[0].split("allowed: ")[1].split(", ")


def test_a_users_presets_are_options_of_their_group(user_conf: Path) -> None:
    assert choices("experiment", [f"file://{user_conf}"]) == sorted(choices("experiment") + ["tiny"])
    cfg = compose_config([f"hydra.searchpath=[file://{user_conf}]", "experiment=tiny"])
    assert cfg.model.glimpses == 2 and cfg.data.name == "mnist"


def test_a_users_preset_named_like_the_packages_or_a_missing_folder_is_refused(user_conf: Path) -> None:
    searchpath = f"hydra.searchpath=[file://{user_conf}]"
    (user_conf / "experiment" / "ram_mnist.yaml").write_text(USER_PRESET)
    assert (CONF_DIR / "experiment" / "ram_mnist.yaml").is_file()
    with pytest.raises(UserError, match="ram_mnist.yaml has the name of the package's experiment=ram_mnist"):
        check_overrides([searchpath, "experiment=ram_mnist"])  # Hydra would read the package's, ignoring the user's
    with pytest.raises(UserError, match="no_such_folder names no folder"):
        check_overrides([f"hydra.searchpath=[file://{user_conf / 'no_such_folder'}]", "experiment=tiny"])
