"""The command lines as a user types them: bad input gets one line and exit 2, good input gets JSON."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import data_root, needs_mnist

BAD = {
    "sensor.patch=0": "sensor.patch",
    "sensor.scales=-1": "sensor.scales",
    "sensor.scale_factor=0.5": "sensor.scale_factor",
    "model.glimpses=0": "model.glimpses",
    "model.std=0": "model.std",
    "model.std=abc": "model.std",
    "trainer.batch_size=0": "trainer.batch_size",
    "trainer.epochs=-3": "trainer.epochs",
    "trainer.lr=0": "trainer.lr",
    "data=imagenet": "data",
    "model=transformer": "model",
    "model.core=lstmx": "model.core",
    "trainer.epochz=3": "trainer.epochz",
    "device=tpu": "device",
}


def run(module, *args, cwd):
    env = {**os.environ, "GLIMPSE_DATA": str(data_root())}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.parametrize("override, key", BAD.items())
def test_bad_config_value_is_one_clear_line_and_exit_2(override, key, tmp_path):
    out = run("glimpse.train", override, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "outputs").exists()  # stopped before any work: no run folder


def test_missing_dataset_is_one_clear_line(tmp_path):
    out = run("glimpse.train", f"data.root={tmp_path / 'nowhere'}", "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert "nowhere" in line and "GLIMPSE_DATA" in line


@needs_mnist
def test_bench_prints_json_with_throughput_and_shares(tmp_path):
    out = run("glimpse.bench", "--steps", "2", "--repeats", "2", "trainer.batch_size=32", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["train_images_per_second"] > 0 and result["inference_images_per_second"] > 0
    assert 0 < result["data_share"] < 1 and 0 < result["sensor_share"] < 1 and len(result["train_images_per_second_repeats"]) == 2


@needs_mnist
def test_train_then_evaluate_from_the_command_line(tmp_path):
    args = ["trainer.epochs=1", "data.train_limit=2000", "data.eval_limit=500", "trainer.eval_samples=2", "trainer.progress=false"]
    out = run("glimpse.train", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()
    evaluated = run("glimpse.evaluate", "run", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_error"] == metrics["test_error"]
    nothing = run("glimpse.evaluate", "not-a-run", cwd=tmp_path)
    assert nothing.returncode == 2 and len(nothing.stderr.strip().splitlines()) == 1
