"""Long runs die. A run killed with SIGKILL at any moment resumes to the very same result; bad checkpoints are
refused."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from glimpse import checkpoint
from glimpse.errors import UserError
from glimpse.models import build_model
from glimpse.train import NonFiniteError, make_optimizer, train, train_step
from tests.conftest import data_root, make_cfg, needs_mnist

# Small enough for seconds, with a mid-epoch checkpoint every ~30 ms: kills land in steps and in checkpoint writes.
TINY = ("data.train_limit=3000", "data.eval_limit=500", "trainer.epochs=3", "trainer.batch_size=64",
        "trainer.eval_samples=2", "trainer.progress=false", "trainer.checkpoint_every_minutes=0.0005")
SAME = ("test_error", "test_error_greedy", "val_error_best", "best_epoch")


def start_training(run_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "GLIMPSE_DATA": str(data_root()), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "glimpse.train", *TINY, f"hydra.run.dir={run_dir}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def kill_when(proc: subprocess.Popen, moment) -> None:
    """SIGKILL `proc` as soon as `moment()` holds (polled every millisecond)."""
    deadline = time.monotonic() + 300
    while not moment() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def after(seconds: float, condition=lambda: True):
    """A moment: `seconds` after `condition` first holds."""
    since = None

    def moment() -> bool:
        nonlocal since
        if since is None and condition():
            since = time.monotonic()
        return since is not None and time.monotonic() - since >= seconds

    return moment


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run_dir)).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in ("train/loss/ce", "train/loss/reinforce", "val/error", "val/error_greedy", "test/error")}


def assert_same_results(run_dir: Path, reference_dir: Path, name: str) -> None:
    """metrics.json's figures and the TensorBoard curves equal the uninterrupted run's: the killed run's events
    after its checkpoint were purged, none is doubled."""
    resumed, reference = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, reference_dir))
    assert {k: resumed[k] for k in SAME} == {k: reference[k] for k in SAME}, name
    assert curves(run_dir) == curves(reference_dir), name
    assert history(run_dir) == history(reference_dir), name


def history(run_dir: Path) -> list[dict]:
    """history.jsonl's records without what depends on the clock: one per epoch, in order, none doubled."""
    records = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    clock = ("time", "train_seconds", "train/images_per_second")
    return [{k: v for k, v in r.items() if k not in clock} for r in records]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    finish(start_training(run_dir))
    return run_dir


@needs_mnist
@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_bit_identical_results(uninterrupted, tmp_path):
    rng = random.Random(7)
    kills = {
        # before the first checkpoint (still importing torch): resume starts over
        "at the start": lambda run: after(0.5),
        # random moments once checkpoints exist: mostly inside a step, sometimes inside a write
        "at a random moment": lambda run: after(rng.uniform(0, 2), (run / "checkpoints" / "last.pt").exists),
        "at another random moment": lambda run: after(rng.uniform(0, 2), (run / "checkpoints" / "last.pt").exists),
        # during a checkpoint write: the temp file exists, the rename has not happened yet
        "during a checkpoint write": lambda run: after(0, lambda: any((run / "checkpoints").glob(".last.pt.*.tmp"))),
        # between epochs: best.pt written, the test not yet done
        "after an epoch": lambda run: after(0, (run / "checkpoints" / "best.pt").exists),
    }
    mid_epoch = []
    for name, moment in kills.items():
        run_dir = tmp_path / name.replace(" ", "_")
        proc = start_training(run_dir)
        kill_when(proc, moment(run_dir))
        assert proc.returncode == -signal.SIGKILL, name
        assert not (run_dir / "metrics.json").exists(), f"{name}: the run finished before the kill"
        if (run_dir / "checkpoints" / "last.pt").exists():
            mid_epoch.append(checkpoint.load(run_dir / "checkpoints" / "last.pt")["progress"]["batch"] > 0)
        finish(start_training(run_dir, "trainer.resume=true"))

        assert_same_results(run_dir, uninterrupted, name)
        for which in ("last.pt", "best.pt"):
            a, b = weights(run_dir / "checkpoints" / which), weights(uninterrupted / "checkpoints" / which)
            assert all(torch.equal(a[k], b[k]) for k in a), f"{name}: {which} differs"
        assert not list((run_dir / "checkpoints").glob(".*.tmp")), "stale temp files left behind"
    assert any(mid_epoch), "no kill resumed from a mid-epoch checkpoint"


@needs_mnist
@pytest.mark.slow
def test_a_run_killed_after_its_test_but_before_metrics_json_resumes_to_one_test_event(uninterrupted, tmp_path):
    # The window between writing the test/ scalars and metrics.json is too short to hit with a kill: make it by hand.
    run_dir = tmp_path / "killed_at_the_end"
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "metrics.json").unlink()
    finish(start_training(run_dir, "trainer.resume=true"))

    assert_same_results(run_dir, uninterrupted, "killed at the end")  # test/error once, not twice
    assert len(curves(run_dir)["test/error"]) == 1


@needs_mnist
def test_a_run_folder_is_never_reused_without_resume(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a run"):
        train(make_cfg(*TINY), tmp_path)


@needs_mnist
def test_resume_with_a_different_model_config_names_the_keys_that_differ(tmp_path):
    other = OmegaConf.to_container(make_cfg(*TINY, "model.hidden=64"), resolve=True)
    checkpoint.save({"config": other, "model": {}, "optimizer": {}, "scheduler": {}, "progress": {}},
                    tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(UserError, match=r"model\.hidden: 64 -> 256"):
        train(make_cfg(*TINY, "trainer.resume=true"), tmp_path)


def test_a_checkpoint_written_before_a_key_existed_holds_the_value_that_computes_the_same():
    from glimpse.config import RESULT_NEUTRAL_KEYS
    from glimpse.train import ADDED_KEYS

    current = OmegaConf.to_container(make_cfg(*TINY), resolve=True)
    older = OmegaConf.to_container(make_cfg(*TINY), resolve=True)
    del older["trainer"]["precision"]  # written before trainer.precision existed: float32 throughout
    assert checkpoint.config_differences(older, current, RESULT_NEUTRAL_KEYS, absent=ADDED_KEYS) == []
    current["trainer"]["precision"] = "bf16"
    assert checkpoint.config_differences(older, current, RESULT_NEUTRAL_KEYS,
                                         absent=ADDED_KEYS) == ["trainer.precision: fp32 -> bf16"]


@needs_mnist
def test_a_resumed_run_may_change_every_result_neutral_key(tmp_path):
    """glimpse.config.RESULT_NEUTRAL_KEYS, each changed at resumption: accepted, and the result is the same."""
    small = (*TINY, "trainer.epochs=1", "data.train_limit=256", "data.eval_limit=100")
    finished = train(make_cfg(*small), tmp_path)
    (tmp_path / "metrics.json").unlink()
    changed = ("trainer.progress=true", "trainer.checkpoint_every_minutes=5", "trainer.visual_every=0",
               "trainer.visual_images=2", "trainer.cuda_graph=false", "trainer.on_nonfinite=skip",
               f"data.root={data_root()}/.", "data.download=true")
    resumed = train(make_cfg(*small, "trainer.resume=true", *changed), tmp_path)
    assert {k: resumed[k] for k in SAME} == {k: finished[k] for k in SAME}


@needs_mnist
def test_a_model_without_an_added_key_resumes(tmp_path):
    """An added key of one model (RAM's) is no difference for a model that has no such key."""
    cfg = make_cfg(*TINY, "model=soft", "trainer.epochs=1", "data.train_limit=256", "data.eval_limit=100")
    train(cfg, tmp_path)
    (tmp_path / "metrics.json").unlink()
    resumed = train(make_cfg(*TINY, "model=soft", "trainer.epochs=1", "data.train_limit=256", "data.eval_limit=100",
                             "trainer.resume=true"), tmp_path)
    assert resumed["epochs"] == 1


def test_checkpoints_and_metrics_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        checkpoint.atomic_write(tmp_path / "metrics.json", lambda f: f.write(b"{}"))
        checkpoint.save({"model": {}}, tmp_path / "checkpoints" / "last.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "checkpoints" / "last.pt").stat().st_mode & 0o777 == 0o640


@needs_mnist
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import glimpse.train

    real, calls = glimpse.train.hybrid_loss, []

    def nan_in_the_second_epoch(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        calls.append(1)
        return (loss * torch.nan if len(calls) == 60 else loss), terms  # 47 batches per epoch

    monkeypatch.setattr(glimpse.train, "hybrid_loss", nan_in_the_second_epoch)
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient.*epoch 2, batch 13"):
        # a CUDA graph calls the patched loss only while it is captured (tests/test_cuda.py poisons a batch instead)
        train(make_cfg(*TINY, "trainer.checkpoint_every_minutes=0", "trainer.cuda_graph=false"), tmp_path)
    last = checkpoint.load(tmp_path / "checkpoints" / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values())
    assert not (tmp_path / "metrics.json").exists()


@needs_mnist
def test_nonfinite_batches_can_be_skipped_and_counted(tmp_path, monkeypatch):
    import glimpse.train

    real, calls = glimpse.train.hybrid_loss, []

    def two_bad_batches(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        calls.append(1)
        return (loss * torch.inf if len(calls) in (5, 50) else loss), terms

    monkeypatch.setattr(glimpse.train, "hybrid_loss", two_bad_batches)
    metrics = train(make_cfg(*TINY, "trainer.on_nonfinite=skip", "trainer.cuda_graph=false"), tmp_path)
    assert metrics["test_error"] < 90
    skipped = [e.value for e in EventAccumulator(str(tmp_path)).Reload().Scalars("train/skipped_batches")]
    assert skipped == [1, 1, 0]


def test_a_step_with_a_nonfinite_gradient_but_a_finite_loss_leaves_weights_and_adam_untouched():
    cfg = make_cfg("model.glimpses=3")
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    optimizer, _ = make_optimizer(model, cfg)
    images, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    train_step(model, optimizer, images, labels, torch.Generator().manual_seed(0), cfg.model)  # Adam has state now
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adam_before = [s["step"].clone() for s in optimizer.state.values()]

    hook = model.core.cell.weight.register_hook(lambda grad: grad.index_fill(0, torch.tensor([3]), torch.inf))
    loss, _, finite = train_step(model, optimizer, images, labels, torch.Generator().manual_seed(1), cfg.model)
    assert torch.isfinite(loss) and not finite
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [s["step"] for s in optimizer.state.values()] == adam_before

    hook.remove()
    assert train_step(model, optimizer, images, labels, torch.Generator().manual_seed(1), cfg.model)[2]
    assert not torch.equal(before["core.cell.weight"], model.core.cell.weight)


class RunsCode:
    """A pickle that would run code when loaded without weights_only."""

    def __reduce__(self):
        return (os.system, (f"touch {RunsCode.marker}",))


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "truncated or damaged zip archive"),
    ("random bytes", "neither a zip archive nor a pickle"),
    ("code-running pickle", "Python objects other than tensors"),
    ("foreign dict", "no 'glimpse-checkpoint-1' marker"),
    ("incomplete", "lacks model"),
    ("empty", "empty file"),
])
def test_bad_checkpoints_are_refused_with_one_line_naming_the_file(kind, reason, tmp_path):
    good = tmp_path / "good.pt"
    checkpoint.save({"config": {}, "model": {"w": torch.ones(1000)}}, good)
    bad = tmp_path / "bad.pt"
    RunsCode.marker = tmp_path / "pwned"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "random bytes":
        bad.write_bytes(random.Random(0).randbytes(5000))
    elif kind == "code-running pickle":
        torch.save({"format": checkpoint.FORMAT, "config": RunsCode(), "model": {}}, bad)
    elif kind == "foreign dict":
        torch.save({"state_dict": {"w": torch.ones(3)}}, bad)
    elif kind == "incomplete":
        checkpoint.save({"config": {}}, bad)
    else:
        bad.write_bytes(b"")
    with pytest.raises(UserError) as err:
        checkpoint.load(bad)
    message = str(err.value)
    assert str(bad) in message and reason in message and "\n" not in message
    assert not RunsCode.marker.exists(), "loading ran code"


def test_evaluate_refuses_a_corrupt_checkpoint_with_exit_2(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "best.pt").write_bytes(b"\x80\x02not a checkpoint")
    out = subprocess.run([sys.executable, "-m", "glimpse.evaluate", str(tmp_path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "best.pt" in out.stderr


@needs_mnist
def test_two_runs_started_in_the_same_second_get_different_folders(tmp_path):
    env = {**os.environ, "GLIMPSE_DATA": str(data_root()), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "glimpse.train", "data.train_limit=256", "data.eval_limit=128", "trainer.epochs=1",
            "trainer.eval_samples=1", "trainer.progress=false"]
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        finish(p)
    runs = sorted(p.parent for p in tmp_path.glob("outputs/*/*/metrics.json"))
    assert len(runs) == 2 and runs[0] != runs[1]


@needs_mnist
def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tmp_path):
    from glimpse.evaluate import load_run

    cfg = OmegaConf.to_container(make_cfg(*TINY), resolve=True)
    checkpoint.save({"config": cfg, "model": {"glimpse_net.what.weight": torch.zeros(3, 3)}},
                    tmp_path / "checkpoints" / "best.pt")
    with pytest.raises(UserError, match="does not fit the model its config describes.*glimpse_net"):
        load_run(tmp_path)
