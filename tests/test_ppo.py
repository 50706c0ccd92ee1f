"""PPO on the glimpse task: stable-baselines3's agent through the batched environment (experiments/ppo_sb3.py), and
RAM trained by PPO through GlimpseVectorEnv (experiments/ppo_ram.py), whose run folder the project's tools read."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import glimpse  # noqa: F401  registers glimpse/*-v0
from glimpse.env import GlimpseVectorEnv
from tests.conftest import data_root, make_cfg, needs_mnist

pytestmark = needs_mnist

ROOT = Path(__file__).resolve().parents[1]
SMALL = [f"data.root={data_root()}", "data.train_limit=500", "data.eval_limit=200"]


def load_script(name: str):
    """experiments/<name>.py, a script rather than a module of the package."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small batches, as fast on one thread; two OpenMP threads spin against any other process on a 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sb3_script():
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("sb3_contrib")
    return load_script("ppo_sb3")


@pytest.fixture(scope="module")
def ram_script():
    return load_script("ppo_ram")


# ---------------------------------------------------------------------------------------------- stable-baselines3


def test_sb3_vec_env_remembers_the_episode_masks_by_step_and_resets_on_the_last_step(sb3_script):
    n, grid, glimpses, pixels = 4, 5, 3, 64
    envs = GlimpseVectorEnv(n, "mnist", split="test", glimpses=glimpses, start="centre", tensors=True, overrides=SMALL)
    env = sb3_script.SB3VecEnv(envs, grid=grid)
    slot = pixels + 2
    assert env.observation_space.shape == (glimpses * slot + glimpses,) and env.action_space.n == grid * grid + 10

    obs = env.reset(np.arange(n))
    assert env.observation_space.contains(obs[0])
    assert np.array_equal(obs[:, pixels : slot], np.zeros((n, 2))) and not obs[:, slot : 3 * slot].any()
    assert np.array_equal(obs[:, -glimpses:], np.tile([1, 0, 0], (n, 1)))
    assert env.action_masks()[:, : grid * grid].all() and not env.action_masks()[:, grid * grid :].any()

    # cell 7 = row 1, column 2 of the 5 x 5 grid over [-1, 1]^2: x = 0, y = -0.5
    obs, reward, done, infos = env.step(np.full(n, 7))
    assert np.allclose(obs[:, slot + pixels : 2 * slot], [[0.0, -0.5]] * n) and obs[:, slot : slot + pixels].any()
    assert not done.any() and not reward.any() and np.array_equal(obs[:, -glimpses:], np.tile([0, 1, 0], (n, 1)))
    obs, *_ = env.step(np.zeros(n, np.int64))
    assert np.array_equal(obs[:, -glimpses:], np.tile([0, 0, 1], (n, 1)))
    assert env.action_masks()[:, grid * grid :].all() and not env.action_masks()[:, : grid * grid].any()

    labels = envs.unwrapped._episodes.labels.numpy()
    answers = np.where(np.arange(n) % 2 == 0, labels, (labels + 1) % 10)  # right for even episodes only
    before = obs
    obs, reward, done, infos = env.step(grid * grid + answers)
    assert done.all() and reward.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert [info["correct"] for info in infos] == [True, False, True, False]
    assert np.array_equal(infos[0]["terminal_observation"], before[0])  # the finished episode, all its glimpses
    # sb3's same-step reset: the next episodes' first observations
    assert np.array_equal(obs[:, -glimpses:], np.tile([1, 0, 0], (n, 1))) and not obs[:, slot : 3 * slot].any()


@pytest.mark.parametrize("options", [[], ["--actions", "joint", "--reward", "every_step"], ["--policy", "lstm"]],
                         ids=["maskable_memory", "joint_every_step", "recurrent"])
def test_the_sb3_example_trains_and_scores_the_test_split(sb3_script, tmp_path, options, capsys):
    out = tmp_path / "run"
    overrides = [arg for o in SMALL for arg in ("--override", o)]
    assert sb3_script.main(["--steps", "300", "--envs", "16", "--rollout", "2", "--eval-every", "200",
                            "--out", str(out), *overrides, *options]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert printed == metrics and metrics["test_episodes"] == 200 and 0 <= metrics["test_accuracy"] <= 100
    assert metrics["steps"] >= 300 and metrics["chance_accuracy"] == 10.0
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [row["steps"] for row in curve][-1] == metrics["steps"] and len(curve) >= 2
    assert set(curve[0]) == {"steps", "minutes", "train_accuracy", "val_accuracy"}
    assert (out / "model.zip").is_file()


def test_the_sb3_example_refuses_combinations_that_cannot_work(sb3_script, tmp_path):
    for options in (["--policy", "lstm", "--actions", "masked"], ["--reward", "every_step"]):
        with pytest.raises(SystemExit) as stop:
            sb3_script.main([*options, "--out", str(tmp_path / "never")])
        assert stop.value.code == 2
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------------------------------------- RAM by PPO


def test_gae_with_lambda_one_is_the_episodes_return_minus_the_baseline(ram_script):
    values = torch.tensor([[0.2, 0.5, 0.9], [0.4, 0.3, 0.1]])
    reward = torch.tensor([1.0, 0.0])
    adv, returns = ram_script.advantages(values, reward, 1.0)
    torch.testing.assert_close(adv, reward[:, None] - values)
    torch.testing.assert_close(returns, reward[:, None].expand(-1, 3))
    adv, _ = ram_script.advantages(values, reward, 0.0)  # one-step: the next baseline, the outcome after the last
    torch.testing.assert_close(adv, torch.tensor([[0.3, 0.4, 0.1], [-0.1, -0.2, -0.1]]))


def test_the_update_replays_exactly_what_the_rollout_played(ram_script):
    from glimpse.data import GlimpseData, seeded
    from glimpse.models import build_model

    cfg = make_cfg("experiment=ram_translated60", "data.train_limit=500", "data.eval_limit=100", "device=cpu")
    data = GlimpseData(cfg.data, cfg.seed, "cpu")
    model = build_model(cfg, data.image_shape, data.classes)
    s = cfg.sensor
    envs = GlimpseVectorEnv(32, data=data, glimpses=cfg.model.glimpses, patch=s.patch, scales=s.scales,
                            scale_factor=s.scale_factor, resize=s.resize, tensors=True)
    envs.reset(seed=0)
    indices = torch.arange(100, 132)
    batch = ram_script.rollout(model, envs, indices, seeded(0, "test"))
    assert batch.glimpses.shape == (32, 8, 3, 1, 12, 12) and batch.log_pi.shape == batch.values.shape == (32, 7)
    assert torch.equal(batch.labels, data.train.labels[indices])
    assert torch.equal(batch.locations[:, 1:], batch.samples.clamp(-1, 1))  # each glimpse read where the policy said
    hs = ram_script.replay(model, batch.glimpses, batch.locations)
    states = torch.stack(hs[:-1], 1)
    # same weights, same glimpses: the first update's ratios are exactly 1
    torch.testing.assert_close(model.location_net.log_prob(batch.samples, model.location_net(states)), batch.log_pi)
    torch.testing.assert_close(model.baseline_net(states), batch.values)
    assert torch.equal((model.action_net(hs[-1]).argmax(1) == batch.labels).float(), batch.reward)


def ppo_ram_args(out: Path, *extra: str) -> list[str]:
    return [f"data.root={data_root()}", "trainer.progress=false", "device=cpu", "data.eval_limit=200",
            "trainer.eval_samples=2", *extra, "--out", str(out)]


def test_ppo_ram_writes_a_run_folder_that_evaluate_and_compare_read(ram_script, tmp_path, capsys):
    from glimpse import compare
    from glimpse.evaluate import main as evaluate

    out = tmp_path / "run"
    assert ram_script.main(ppo_ram_args(out, "trainer.epochs=2", "data.train_limit=300", "--num-envs", "128",
                                        "--minibatch", "64", "--update-epochs", "1")) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == printed["model"] == "ram_ppo" and metrics["data"] == "mnist"
    for key in ("test_error", "test_error_greedy", "test_error_single", "val_error_best", "best_epoch",
                "train_seconds", "params", "macs_per_image", "pixels_per_image", "glimpses"):
        assert metrics[key] is not None, key
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and history[-1]["images_seen"] == 2 * 2 * 128
    assert {"val/error", "val/error_greedy", "train/loss/ce", "train/loss/policy", "train/clip_fraction"} <= set(
        history[0])
    log = (out / "train.log").read_text().splitlines()
    assert "epoch 2/2" in log[-2] and "test error" in log[-1]

    # the checkpoint is plain RAM: glimpse.evaluate re-scores it to the same figures
    assert evaluate([str(out)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert (scored["test_error"], scored["test_error_greedy"]) == (metrics["test_error"], metrics["test_error_greedy"])
    run = compare.load_run(out)
    assert run.model == "ram_ppo" and run.config["ppo.num_envs"] == 128 and run.metrics == metrics


def test_ppo_ram_target_kl_ends_a_rollouts_passes_early(ram_script, tmp_path):
    def passes(*extra: str) -> list[float]:
        out = tmp_path / "_".join(extra)
        assert ram_script.main(ppo_ram_args(out, "trainer.epochs=1", "data.train_limit=300", "--num-envs", "128",
                                            "--minibatch", "64", "--update-epochs", "3", *extra)) == 0
        return [json.loads(line)["train/passes"] for line in (out / "history.jsonl").read_text().splitlines()]

    assert passes() == [3.0]
    assert passes("--target-kl", "1e-12") == [1.0]  # any change of the policy exceeds it after the first pass


def test_ppo_ram_refuses_bad_settings_in_one_line_and_leaves_no_folder(ram_script, tmp_path, capsys):
    for extra in (["--num-envs", "100", "--minibatch", "64"], ["model=soft"], ["model.glimpses=1"],
                  ["data.train_limit=100", "--num-envs", "128"], ["model.episodes_per_image=2"]):
        assert ram_script.main(ppo_ram_args(tmp_path / "never", *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("ppo_ram: ") and "\n" not in err
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_ppo_ram_learns_mnist_well_above_chance(ram_script, tmp_path):
    out = tmp_path / "run"
    assert ram_script.main(ppo_ram_args(out, "trainer.epochs=6", "data.train_limit=4096", "--num-envs", "512")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_error"] < 50 and metrics["test_error_greedy"] < 60  # chance: 90
