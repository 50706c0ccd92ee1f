"""Train stable-baselines3's PPO on a glimpse environment for a short budget and print its test accuracy as JSON.

    pip install -e ".[sb3]"
    python experiments/ppo_sb3.py [--env glimpse/MNIST-v0] [--timesteps 20000] [--override data.train_limit=5000 ...]

SB3 takes neither Dict actions nor Dict-of-Box observations with an MLP, so the
environment is wrapped by `glimpse.env.flat`: the action is one Box [x, y,
10 class scores] (the prediction is the highest score) and the observation the
glimpse's pixels followed by its location. PPO has to learn both where to look
and what to answer from the episode's single reward (1 for a correct final
prediction), a far weaker signal than RAM's cross-entropy, through an argmax
over Gaussian class scores: within short budgets it stays at chance (checked on
MNIST with 5,000 training images after 20,000 and 40,000 steps, also with
`reward_every_step=True`). The script shows the pipeline works end to end; it
is no rival to RAM. The test figure is the deterministic policy on the first
`--episodes` test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import gymnasium

import glimpse  # noqa: F401  registers glimpse/*-v0
from glimpse.env import flat
from glimpse.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/ppo_sb3.py", description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="glimpse/MNIST-v0")
    parser.add_argument("--timesteps", type=int, default=20_000, help="environment steps of training")
    parser.add_argument("--envs", type=int, default=8, help="environments PPO collects from")
    parser.add_argument("--episodes", type=int, default=1000, help="test images scored at the end")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--override", action="append", default=[],
                        help="a python -m glimpse.train override, e.g. data.train_limit=5000")
    args = parser.parse_args(argv)
    try:
        from stable_baselines3 import PPO
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:
        print('ppo_sb3: stable-baselines3 is not installed; install the extra: pip install -e ".[sb3]"',
              file=sys.stderr)
        return 1

    try:
        train_envs = make_vec_env(lambda: flat(gymnasium.make(args.env, overrides=args.override)), n_envs=args.envs,
                                  seed=args.seed)
        test_env = flat(gymnasium.make(args.env, split="test", overrides=args.override))
    except UserError as err:
        print(f"ppo_sb3: {err}", file=sys.stderr)
        return 2
    glimpses = test_env.unwrapped.glimpses
    # A rollout of 16 episodes per environment; minibatches of a quarter of a rollout.
    n_steps = 16 * glimpses
    agent = PPO("MlpPolicy", train_envs, n_steps=n_steps, batch_size=n_steps * args.envs // 4, n_epochs=4,
                learning_rate=3e-4, seed=args.seed, device="cpu", verbose=0)
    tic = time.perf_counter()
    agent.learn(total_timesteps=args.timesteps)
    seconds = time.perf_counter() - tic

    episodes = min(args.episodes, test_env.unwrapped.num_images)
    correct = 0.0
    for i in range(episodes):
        obs, _ = test_env.reset(seed=args.seed + i, options={"index": i})
        terminated = False
        while not terminated:
            action, _ = agent.predict(obs, deterministic=True)
            obs, reward, terminated, _, _ = test_env.step(action)
        correct += reward
    accuracy = 100.0 * correct / episodes
    print(json.dumps({"env": args.env, "timesteps": args.timesteps, "train_seconds": round(seconds, 1),
                      "test_episodes": episodes, "test_accuracy": accuracy, "test_error": 100.0 - accuracy,
                      "chance_error": 100.0 * (1 - 1 / test_env.unwrapped.action_space["prediction"].n),
                      "glimpses": glimpses, "seed": args.seed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
