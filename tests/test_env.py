"""The glimpse task as gymnasium environments: the API contract, the episode's rules, the vector env, RAM as a
policy."""

import json
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import glimpse  # noqa: F401  registers glimpse/*-v0
from glimpse.env import FlatActions, GlimpseEnv, GlimpseVectorEnv, RAMPolicy, flat, ram_error, vector_steps_per_second
from glimpse.errors import UserError
from tests.conftest import data_root, make_cfg, needs_mnist

pytestmark = needs_mnist

# Small splits: the environments share one GlimpseData per config, and canvases are drawn for 200 test images only.
SMALL = [f"data.root={data_root()}", "data.train_limit=500", "data.eval_limit=200"]
MNIST_FAMILY = ["glimpse/MNIST-v0", "glimpse/TranslatedMNIST-v0", "glimpse/ClutteredMNIST60-v0",
                "glimpse/ClutteredMNIST100-v0"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Everything here runs small batches, as fast on one thread. Two OpenMP threads spin against any other
    process on a 2-core machine: the short RAM run below took 30 s instead of 1 s beside a training run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def mnist_env(**kwargs) -> GlimpseEnv:
    return GlimpseEnv("mnist", overrides=SMALL, **kwargs)


def play(env: GlimpseEnv, actions: list[dict], **reset) -> list[tuple]:
    """(observation, reward, terminated) of a reset and then each action."""
    obs, _ = env.reset(**reset)
    seen = [(obs, 0.0, False)]
    for action in actions:
        obs, reward, terminated, _, _ = env.step(action)
        seen.append((obs, reward, terminated))
    return seen


needs_fashion = pytest.mark.skipif(not (data_root() / "FashionMNIST" / "raw").is_dir(),
                                   reason="FashionMNIST not found under GLIMPSE_DATA")


@pytest.mark.parametrize("env_id", [*MNIST_FAMILY, pytest.param("glimpse/FashionMNIST-v0", marks=needs_fashion),
                                    pytest.param("glimpse/ClutteredFashionMNIST60-v0", marks=needs_fashion)])
def test_gymnasium_checker_passes_on_every_registered_mnist_id(env_id):
    env = gymnasium.make(env_id, overrides=SMALL)
    check_env(env.unwrapped)
    env.close()


def test_the_ids_carry_the_ram_presets_retinas():
    shapes = {env_id: gymnasium.make(env_id, overrides=SMALL).observation_space["glimpse"].shape
              for env_id in MNIST_FAMILY}
    assert shapes == {"glimpse/MNIST-v0": (1, 1, 8, 8), "glimpse/TranslatedMNIST-v0": (3, 1, 12, 12),
                      "glimpse/ClutteredMNIST60-v0": (3, 1, 12, 12), "glimpse/ClutteredMNIST100-v0": (4, 1, 12, 12)}
    assert gymnasium.make("glimpse/ClutteredMNIST100-v0", overrides=SMALL).unwrapped.glimpses == 8


def test_missing_data_is_the_projects_one_line_error(tmp_path):
    for env_id in ("glimpse/CIFAR10-v0", "glimpse/MNIST-v0"):
        with pytest.raises(UserError, match="not found") as err:
            gymnasium.make(env_id, overrides=[f"data.root={tmp_path}"])
        assert "\n" not in str(err.value)


def test_a_seeded_reset_replays_the_same_episode():
    env = GlimpseEnv("cluttered_mnist60", overrides=SMALL, patch=12, scales=3)  # training canvases: drawn per episode
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(env.glimpses)]
    first, again = play(env, actions, seed=7), play(env, actions, seed=7)
    for (a, ra, ta), (b, rb, tb) in zip(first, again):
        assert (np.array_equal(a["glimpse"], b["glimpse"]) and np.array_equal(a["location"], b["location"])
                and (ra, ta) == (rb, tb))
    other = play(env, actions, seed=8)
    assert not np.array_equal(first[0][0]["glimpse"], other[0][0]["glimpse"])


def test_every_observation_lies_in_the_observation_space():
    env = GlimpseEnv(experiment="ram_cluttered100", overrides=SMALL)
    env.action_space.seed(1)
    for seed in range(5):
        for obs, _, _ in play(env, [env.action_space.sample() for _ in range(8)], seed=seed):
            assert env.observation_space.contains(obs)


def test_an_episode_is_glimpses_steps_and_only_the_last_prediction_scores():
    env = mnist_env(split="test", glimpses=4)
    _, info = env.reset(seed=0)
    label = env.unwrapped._episodes.labels[0].item()
    right = {"location": np.zeros(2, np.float32), "prediction": label}
    steps = [env.step(right) for _ in range(4)]
    assert [terminated for _, _, terminated, _, _ in steps] == [False, False, False, True]
    assert [reward for _, reward, _, _, _ in steps] == [0.0, 0.0, 0.0, 1.0]
    assert steps[-1][4] == {"index": info["index"], "label": label, "correct": True}
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(right)

    every = mnist_env(split="test", glimpses=4, reward_every_step=True)
    every.reset(seed=0)
    wrong = {"location": np.zeros(2, np.float32), "prediction": (label + 1) % 10}
    assert [every.step(a)[1] for a in (right, wrong, right, right)] == [0.25, 0.0, 0.25, 0.25]


def test_the_location_moves_where_the_action_says_and_the_last_observation_repeats_the_last_glimpse():
    env = mnist_env(split="test", glimpses=3, start="centre")
    look = [{"location": np.array([-0.5, 0.5], np.float32), "prediction": 0},
            {"location": np.array([0.25, -0.75], np.float32), "prediction": 0},
            {"location": np.array([0.9, 0.9], np.float32), "prediction": 0}]
    seen = play(env, look, seed=0)
    assert [o["location"].tolist() for o, _, _ in seen] == [[0, 0], [-0.5, 0.5], [0.25, -0.75], [0.25, -0.75]]
    assert np.array_equal(seen[-1][0]["glimpse"], seen[-2][0]["glimpse"])


def test_out_of_range_locations_are_clipped_and_bad_actions_refused():
    env = mnist_env(split="test")
    env.reset(seed=0)
    obs, *_ = env.step({"location": np.array([3.0, -np.inf], np.float32), "prediction": 1})
    assert obs["location"].tolist() == [1.0, -1.0]
    with pytest.raises(ValueError, match=r"location'\] contains NaN"):
        env.step({"location": np.array([np.nan, 0.0], np.float32), "prediction": 1})
    for bad in (10, -1):
        with pytest.raises(ValueError, match=rf"prediction'\]={bad} is not a class; allowed: an integer in \[0, 10\)"):
            env.step({"location": np.zeros(2, np.float32), "prediction": bad})
    with pytest.raises(ValueError, match="integer class"):
        env.step({"location": np.zeros(2, np.float32), "prediction": 2.5})
    with pytest.raises(ValueError, match="shape"):
        env.step({"location": np.zeros(3, np.float32), "prediction": 1})
    with pytest.raises(ValueError, match="split"):
        GlimpseEnv("mnist", split="training", overrides=SMALL)


def test_vector_env_shapes_and_next_step_autoreset():
    envs = GlimpseVectorEnv(5, "translated_mnist", glimpses=3, patch=12, scales=3, overrides=SMALL)
    assert envs.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    obs, info = envs.reset(seed=0)
    assert obs["glimpse"].shape == (5, 3, 1, 12, 12) and obs["location"].shape == (5, 2) and info["index"].shape == (5,)
    assert envs.observation_space.contains(obs)
    envs.action_space.seed(0)
    done = []
    for _ in range(8):
        obs, reward, terminated, truncated, info = envs.step(envs.action_space.sample())
        assert envs.observation_space.contains(obs) and reward.shape == (5,) and not truncated.any()
        done.append(terminated.all() if terminated.any() else False)
        if terminated.any():
            assert np.array_equal(reward, info["correct"].astype(np.float32)) and "label" in info
    # Three glimpses: terminal on steps 3 and 7; steps 4 and 8 start new episodes (reward 0, new images).
    assert done == [False, False, True, False, False, False, True, False]


def test_vector_env_sees_what_single_envs_see_given_the_same_images_and_actions():
    n, kwargs = 4, dict(experiment="ram_cluttered60", split="test", glimpses=3, overrides=SMALL)
    rng = np.random.default_rng(0)
    indices, starts = rng.integers(0, 200, n), rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    actions = [{"location": rng.uniform(-1.2, 1.2, (n, 2)).astype(np.float32), "prediction": rng.integers(0, 10, n)}
               for _ in range(3)]
    envs = GlimpseVectorEnv(n, **kwargs)
    batch = [envs.reset(options={"indices": indices, "locations": starts})[0]] + [envs.step(a)[0] for a in actions]
    for i in range(n):
        single = play(GlimpseEnv(**kwargs), [{k: v[i] for k, v in a.items()} for a in actions],
                      options={"index": indices[i], "location": starts[i]})
        for (obs, _, _), b in zip(single, batch):
            # Equal up to the last bit of a bilinear weight: a BLAS may round the sensor's grid product
            # differently for 1 and for n rows: MKL here does not; torch 2.11 on a 16-core Xeon did, by up to 1.9e-6.
            np.testing.assert_allclose(obs["glimpse"], b["glimpse"][i], rtol=0, atol=1e-5)
            assert np.array_equal(obs["location"], b["location"][i])


def test_make_vec_builds_the_torch_vector_env_with_tensor_output():
    envs = gymnasium.make_vec("glimpse/MNIST-v0", num_envs=3, overrides=SMALL, tensors=True)
    assert isinstance(envs.unwrapped, GlimpseVectorEnv) and envs.num_envs == 3
    obs, _ = envs.reset(seed=0)
    assert isinstance(obs["glimpse"], torch.Tensor) and obs["glimpse"].shape == (3, 1, 1, 8, 8)
    actions = {"location": torch.zeros(3, 2), "prediction": torch.tensor([1, 2, 3])}
    _, reward, terminated, _, _ = envs.step(actions)
    assert reward.dtype == torch.float32 and terminated.dtype == torch.bool
    assert vector_steps_per_second("glimpse/MNIST-v0", 16, 10, overrides=SMALL) > 0
    # gymnasium's own vectorisation of single envs works too (they share one copy of the data)
    sync = gymnasium.make_vec("glimpse/MNIST-v0", num_envs=2, vectorization_mode="sync", overrides=SMALL)
    sync.reset(seed=0)
    assert sync.step(sync.action_space.sample())[0]["glimpse"].shape == (2, 1, 1, 8, 8)


def test_flat_wrapper_gives_one_box_action_and_observation():
    env = flat(mnist_env(split="test"))
    assert env.action_space.shape == (12,) and env.observation_space.shape == (1 * 8 * 8 + 2,)
    action = np.zeros(12, np.float32)
    action[[0, 1, 2 + 7]] = [0.5, -0.5, 1.0]
    assert FlatActions(mnist_env()).action(action)["prediction"] == 7
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, *_ = env.step(action)
    assert obs[-2:].tolist() == [0.5, -0.5]  # the location follows the glimpse's pixels


def test_stable_baselines3_accepts_the_flat_env():
    sb3 = pytest.importorskip("stable_baselines3.common.env_checker")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3 warns, rather than fails, on what it cannot train on
        sb3.check_env(flat(mnist_env()))
        with pytest.raises(UserWarning, match="Dict or Tuple"):
            sb3.check_env(mnist_env())


@pytest.fixture(scope="module")
def short_ram_run(tmp_path_factory):
    from glimpse.train import train

    run_dir = tmp_path_factory.mktemp("ram")
    # One epoch of small batches: far from chance (about 67% error), so its predictions are varied.
    cfg = make_cfg("trainer.epochs=1", "trainer.batch_size=16", "trainer.lr=0.003", "data.train_limit=3000",
                   "data.eval_limit=500", "trainer.eval_samples=1", "model.eval_start=centre", "device=cpu")
    return run_dir, train(cfg, run_dir)


def test_ram_through_the_environment_has_evaluates_greedy_test_error(short_ram_run, capsys):
    from glimpse.evaluate import load_run, main

    run_dir, metrics = short_ram_run
    assert main([str(run_dir)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    model, state, data = load_run(run_dir)
    through_env = ram_error(model, data, "test", state["config"]["trainer"]["eval_batch_size"])
    assert through_env["episodes"] == 500
    assert through_env["error_greedy"] == evaluated["test_error_greedy"] == metrics["test_error_greedy"]
    assert through_env["error_greedy"] < 80  # chance is 90: the equality is not that of two constant answers


def test_ram_policy_steps_through_the_same_locations_as_ram(short_ram_run):
    from glimpse.evaluate import load_run

    model, _, data = load_run(short_ram_run[0])
    images = next(data.eval_batches("test", 64))[0]
    with torch.no_grad():
        episode = model.eval()(images, greedy=True)
    envs = GlimpseVectorEnv(64, data=data, split="test", start="centre", tensors=True)
    obs, _ = envs.reset(options={"indices": np.arange(64)})
    policy, locations = RAMPolicy(model), []
    for _ in range(model.glimpses):
        locations.append(obs["location"])
        action = policy(obs)
        obs, *_ = envs.step(action)
    # the same up to float rounding: RAMPolicy runs the modules step by step, RAM its fused episode
    torch.testing.assert_close(torch.stack(locations, 1), episode.locations, rtol=0, atol=1e-5)
    assert torch.equal(action["prediction"], episode.logits.argmax(1))
