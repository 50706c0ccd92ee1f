"""The command lines as a user types them: bad input gets one line and exit 2, good input gets JSON."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import data_root, needs_mnist

# Config values a user may get wrong: (override, the key the one-line message must name).
BAD_CONFIG = {
    "sensor.patch=0": "sensor.patch",
    "sensor.scales=-1": "sensor.scales",
    "sensor.scale_factor=0.5": "sensor.scale_factor",
    "sensor.resize=nearest": "sensor.resize",
    "sensor=canvas70": "sensor",
    "model.glimpses=0": "model.glimpses",
    "model.std=0": "model.std",
    "model.std=abc": "model.std",
    "model.core=lstmx": "model.core",
    "model.eval_start=left": "model.eval_start",
    "trainer.batch_size=0": "trainer.batch_size",
    "trainer.batch_size=1.5": "trainer.batch_size",
    "trainer.epochs=-3": "trainer.epochs",
    "trainer.lr=0": "trainer.lr",
    "trainer.schedule=linear": "trainer.schedule",
    "trainer.on_nonfinite=ignore": "trainer.on_nonfinite",
    "trainer.precision=fp16": "trainer.precision",
    "trainer.checkpoint_every_minutes=-1": "trainer.checkpoint_every_minutes",
    "trainer.visual_every=-2": "trainer.visual_every",
    "trainer.resume=maybe": "trainer.resume",
    "trainer.epochz=3": "trainer.epochz",
    "+trainer.epochz=3": "trainer.epochz",  # appended: read by nothing, so refused too
    "+foo=1": "foo",
    "data=imagenet": "data",
    "data.val_fraction=1.5": "data.val_fraction",
    "data.distractors=-1": "data.distractors",
    "model=transformer": "model",
    "experiment=ram_imagenet": "experiment",
    "optimizer=sgd": "optimizer",
    "seed=abc": "seed",
    "device=tpu": "device",
    "model.glimpses": "model.glimpses",  # no '='
}


def run(module, *args, cwd):
    env = {**os.environ, "GLIMPSE_DATA": str(data_root()), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def one_clear_line(out: subprocess.CompletedProcess, *words: str) -> str:
    """The user's mistake is one line on stderr naming what is wrong, exit code 2, no traceback."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert all(w in lines[0] for w in words), (words, lines[0])
    return lines[0]


@pytest.mark.parametrize("override, key", BAD_CONFIG.items())
def test_bad_config_value_is_one_clear_line_and_exit_2(override, key, tmp_path):
    one_clear_line(run("glimpse.train", override, cwd=tmp_path), key)
    assert not list(tmp_path.iterdir())  # stopped before any work: no run folder


@needs_mnist
@pytest.mark.parametrize("override, key", {
    "data.canvas=20": "data.canvas",  # smaller than the 28x28 digit
    "data.position=[50,50]": "data.position",  # the digit would leave the 60x60 canvas
}.items())
def test_values_checked_against_the_data_stop_before_training_and_leave_no_folder(override, key, tmp_path):
    extra = ["data=translated_mnist"] if "position" in override else []
    one_clear_line(run("glimpse.train", *extra, override, "hydra.run.dir=run", cwd=tmp_path), key)
    assert not (tmp_path / "run").exists()


def test_missing_dataset_names_the_folder_and_how_to_point_at_it(tmp_path):
    line = one_clear_line(run("glimpse.train", f"data.root={tmp_path / 'nowhere'}", "hydra.run.dir=run", cwd=tmp_path),
                          "nowhere", "GLIMPSE_DATA", "data.root")
    assert "not found" in line and not (tmp_path / "run").exists()


@needs_mnist
@pytest.mark.parametrize("damage", ["partial", "corrupt"])
def test_partial_or_corrupt_dataset_is_one_clear_line(damage, tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (data_root() / "MNIST" / "raw").glob("*-ubyte"):
        if damage == "corrupt":
            (raw / f.name).write_bytes(f.read_bytes()[:1000])  # truncated
        elif f.name.startswith("train"):
            (raw / f.name).write_bytes(f.read_bytes())  # the test files missing
    line = one_clear_line(run("glimpse.train", f"data.root={tmp_path / 'data'}", "hydra.run.dir=run", cwd=tmp_path),
                          str(raw))
    assert ("is corrupt or truncated" in line) == (damage == "corrupt")


@pytest.mark.parametrize("module", ["glimpse.evaluate"])
def test_a_folder_that_is_not_a_run_folder_is_named(module, tmp_path):
    (tmp_path / "empty").mkdir()
    one_clear_line(run(module, "empty", cwd=tmp_path), "empty", "not a glimpse run folder")
    one_clear_line(run(module, "no/such/folder", cwd=tmp_path), "no/such/folder")


@needs_mnist
def test_resuming_with_a_different_model_config_names_the_differing_keys(tmp_path):
    from omegaconf import OmegaConf

    from glimpse import checkpoint
    from glimpse.config import compose_config

    saved = OmegaConf.to_container(compose_config([f"data.root={data_root()}", "model.hidden=64"]), resolve=True)
    checkpoint.save({"config": saved, "model": {}, "optimizer": {}, "scheduler": {}, "progress": {}},
                    tmp_path / "run" / "checkpoints" / "last.pt")
    line = one_clear_line(run("glimpse.train", "hydra.run.dir=run", "trainer.resume=true", cwd=tmp_path),
                          "model.hidden: 64 -> 256")
    assert "different config" in line and (tmp_path / "run" / "checkpoints" / "last.pt").exists()


@needs_mnist
def test_bench_prints_json_with_throughput_and_shares(tmp_path):
    out = run("glimpse.bench", "--steps", "2", "--repeats", "2", "trainer.batch_size=32", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["train_images_per_second"] > 0 and result["inference_images_per_second"] > 0
    assert (0 < result["data_share"] < 1 and 0 < result["sensor_share"] < 1
            and len(result["train_images_per_second_repeats"]) == 2)


@needs_mnist
def test_train_then_evaluate_from_the_command_line(tmp_path):
    args = ["trainer.epochs=1", "data.train_limit=2000", "data.eval_limit=500", "trainer.eval_samples=2",
            "trainer.progress=false"]
    out = run("glimpse.train", *args, "hydra.run.dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (tmp_path / "run" / ".hydra" / "config.yaml").exists()
    last_line = (tmp_path / "run" / "train.log").read_text().strip().splitlines()[-1]
    assert f"test error {metrics['test_error']:.2f}% (greedy {metrics['test_error_greedy']:.2f}%)" in last_line
    evaluated = run("glimpse.evaluate", "run", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_error"] == metrics["test_error"]
    checked = run("glimpse.evaluate", "run", "--check", cwd=tmp_path)
    assert checked.returncode == 0 and json.loads(checked.stdout)["matches_metrics"], checked.stderr
    nothing = run("glimpse.evaluate", "not-a-run", cwd=tmp_path)
    assert nothing.returncode == 2 and len(nothing.stderr.strip().splitlines()) == 1
    one_clear_line(run("glimpse.evaluate", "run", "--device", "gpu0", cwd=tmp_path), "invalid device 'gpu0'", "cuda:N")


@needs_mnist
def test_check_says_which_figure_of_which_run_differs_from_its_metrics(tmp_path):
    args = ["trainer.epochs=1", "data.train_limit=500", "data.eval_limit=200", "trainer.eval_samples=2",
            "trainer.progress=false"]
    assert run("glimpse.train", *args, "hydra.run.dir=a", cwd=tmp_path).returncode == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # a second run folder, its metrics.json then altered
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({**metrics, "test_error": metrics["test_error"] + 1}))
    checked = run("glimpse.evaluate", "a", "b", "--check", cwd=tmp_path)
    assert checked.returncode == 1
    assert [json.loads(line)["matches_metrics"] for line in checked.stdout.splitlines()] == [True, False]
    wrong, right = metrics["test_error"] + 1, metrics["test_error"]
    assert checked.stderr.strip().splitlines() == [
        f"glimpse.evaluate: b: test_error {wrong} in metrics.json, {right} re-scored"]
    one_clear_line(run("glimpse.evaluate", "a", "--check", "--split", "val", cwd=tmp_path), "--check", "drop")
