"""stable-baselines3 learns the glimpse task: MaskablePPO over the episode's memory, all environments batched.

    pip install -e ".[sb3]"
    python experiments/ppo_sb3.py [--env glimpse/MNIST-v0] [--minutes 30] [--steps N] [--out DIR] ...

What a practitioner tries first, once the obvious route fails. The obvious route,
PPO's MlpPolicy on `glimpse.env.flat` (the current glimpse only, one Box action
[x, y, 10 class scores] whose argmax is the answer), stays at chance: the policy
sees one glimpse and forgets the others, and a Gaussian over ten scores whose
argmax is the answer gives PPO almost no gradient towards the right class. So
this script changes both sides of the interface, not the task:

- Observation: the episode's memory, `[glimpse_1, l_1, ..., glimpse_T, l_T, onehot(t)]`
  (unseen slots zero, t the glimpses seen), so a feed-forward MLP policy has
  everything an LSTM would have to remember. `--memory last` gives only the
  current glimpse, its location and t.
- Action: one `Discrete(G*G + classes)`: a cell of a G x G grid over [-1, 1]^2
  (`--grid`) while glimpses remain, a class on the last step. sb3-contrib's
  MaskablePPO masks the half that does not apply to the step, so no gradient
  goes to choices that change nothing (`--actions masked`). `--actions joint`
  is plain PPO on `MultiDiscrete([G*G, classes])`: a cell and a class at every
  step, the unused one ignored.
- Reward: `--reward final` is the environment's, 1 for a correct last answer;
  `--reward every_step` its `reward_every_step=True`, 1/T for each step whose
  answer is right (with `--actions joint` only: masked actions answer on the
  last step alone).
- Policy: `--policy mlp` (the default), a feed-forward MLP of `--hidden` layers
  for the policy and as many for the value; `--policy lstm` is sb3-contrib's
  RecurrentPPO with an LSTM of `--hidden[0]` units, by default over `--memory
  last` and with `--actions joint` (RecurrentPPO has no action masks).
- Environments: `--envs` episodes run as one `glimpse.env.GlimpseVectorEnv`
  (one sensor call per step for all of them) behind `SB3VecEnv`, a
  stable-baselines3 VecEnv over it, instead of one `gymnasium.make` per
  environment in sb3's DummyVecEnv, which calls each environment in turn.

The first glimpse is at the centre in training and test alike (`--start`;
`random` is the environment's default and RAM's in training). Progress: every
`--eval-every` environment steps, and when training stops, a line with the
steps, the training minutes, the rollouts' accuracy (the sampled policy) and the
validation accuracy (the deterministic policy on the whole validation split, or
its first `--eval-images`); the same records go to `<out>/curve.jsonl`.
Training stops after `--steps` environment steps or `--minutes` training minutes
(evaluation excluded), whichever comes first; then the deterministic policy
plays every test image once, and the figures go to `<out>/metrics.json` and as
one JSON line to stdout, and the agent to `<out>/model.zip`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

import glimpse  # noqa: F401  registers glimpse/*-v0
from glimpse import checkpoint
from glimpse.env import GlimpseVectorEnv
from glimpse.errors import UserError

try:
    from stable_baselines3.common.vec_env import VecEnv
except ImportError:  # main() says how to install it; the module stays importable for --help
    VecEnv = object  # type: ignore[assignment,misc]


class SB3VecEnv(VecEnv):
    """`GlimpseVectorEnv` as a stable-baselines3 VecEnv with memory observations and grid actions (module docstring).

    All N episodes run in lockstep, T steps each. sb3 wants same-step autoreset: the
    step that ends the episodes returns the next episodes' first observations (the
    finished ones go to `info["terminal_observation"]`), so this class takes the
    environment's next-step reset at once. `info["correct"]` is set on the last step.
    """

    def __init__(self, envs: GlimpseVectorEnv, grid: int = 7, actions: str = "masked", memory: str = "episode"):
        if not envs.tensors:
            raise ValueError("SB3VecEnv needs GlimpseVectorEnv(..., tensors=True)")
        self.envs, self.grid, self.actions, self.memory = envs, grid, actions, memory
        self.glimpses = envs.glimpses
        self.classes = int(envs.single_action_space["prediction"].n)
        self.pixels = int(np.prod(envs.single_observation_space["glimpse"].shape))
        axis = torch.linspace(-1.0, 1.0, grid, device=envs.device)
        # cell k = row * G + column: x from the column, y from the row
        self.cells = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
        slots = self.glimpses if memory == "episode" else 1
        self.slot = self.pixels + 2
        size = slots * self.slot + self.glimpses
        low = np.zeros(size, np.float32)
        for s in range(slots):
            low[s * self.slot + self.pixels : (s + 1) * self.slot] = -1.0
        observation_space = spaces.Box(low, np.ones(size, np.float32), dtype=np.float32)
        cells = grid * grid
        action_space = (spaces.Discrete(cells + self.classes) if actions == "masked"
                        else spaces.MultiDiscrete([cells, self.classes]))
        self.render_mode = None  # read by VecEnv.__init__, which warns without it
        super().__init__(envs.num_envs, observation_space, action_space)
        self.buffer = torch.zeros(envs.num_envs, size, device=envs.device)
        self.t = 0
        self.pending: np.ndarray | None = None

    def _write(self, obs: dict[str, torch.Tensor]) -> None:
        """Put glimpse t (and its location) into its slot and mark step t; a new episode starts from zeros."""
        if self.t == 1:
            self.buffer.zero_()
        slot = self.t - 1 if self.memory == "episode" else 0
        at = slot * self.slot
        self.buffer[:, at : at + self.pixels] = obs["glimpse"].flatten(1)
        self.buffer[:, at + self.pixels : at + self.slot] = obs["location"]
        steps = self.buffer[:, -self.glimpses :]
        steps.zero_()
        steps[:, self.t - 1] = 1.0

    def _out(self) -> np.ndarray:
        return self.buffer.cpu().numpy().copy()

    def reset(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Start N new episodes (on the split's images at `indices` if given); their first observations."""
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        self._reset_seeds()
        options = None if indices is None else {"indices": indices}
        obs, _ = self.envs.reset(seed=seed, options=options)
        self.t = 1
        self._write(obs)
        return self._out()

    def action_masks(self) -> np.ndarray:
        """(N, G*G + classes): the grid cells while glimpses remain, the classes on the last step."""
        mask = np.zeros((self.num_envs, self.grid**2 + self.classes), bool)
        if self.t < self.glimpses:
            mask[:, : self.grid**2] = True
        else:
            mask[:, self.grid**2 :] = True
        return mask

    def step_async(self, actions: np.ndarray) -> None:
        self.pending = actions

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        a = torch.as_tensor(self.pending, device=self.envs.device).long()
        cells = self.grid**2
        if self.actions == "masked":
            # The mask makes the cell half apply before the last step and the class half on it; the other half
            # is still a valid action of the env (the location is unused on the last step, the answer before it).
            cell, prediction = a.clamp(max=cells - 1), (a - cells).clamp(min=0)
        else:
            cell, prediction = a[:, 0], a[:, 1]
        obs, reward, terminated, _, info = self.envs.step({"location": self.cells[cell], "prediction": prediction})
        rewards = reward.cpu().numpy()
        if bool(terminated[0]):
            final = self._out()
            correct = info["correct"].cpu().numpy()
            obs, *_ = self.envs.step({"location": self.cells[cell], "prediction": prediction})  # the next-step reset
            self.t = 1
            self._write(obs)
            infos = [{"terminal_observation": final[i], "correct": bool(correct[i])} for i in range(self.num_envs)]
            return self._out(), rewards, np.ones(self.num_envs, bool), infos
        self.t += 1
        self._write(obs)
        return self._out(), rewards, np.zeros(self.num_envs, bool), [{} for _ in range(self.num_envs)]

    def close(self) -> None:
        self.envs.close()

    def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
        return [getattr(self, attr_name) for _ in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: Any = None, **method_kwargs: Any) -> list[Any]:
        if method_name == "action_masks":  # what MaskablePPO calls, once per step: one row per environment
            return list(self.action_masks()[list(self._get_indices(indices))])
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
        return [False for _ in self._get_indices(indices)]


def make_env(args: argparse.Namespace, split: str, num_envs: int) -> SB3VecEnv:
    """`--env` as `num_envs` batched episodes of `split` behind SB3VecEnv."""
    envs = gymnasium.make_vec(args.env, num_envs=num_envs, split=split, seed=args.seed, start=args.start,
                              reward_every_step=args.reward == "every_step", overrides=args.override,
                              tensors=True, device="cpu")
    return SB3VecEnv(envs.unwrapped, args.grid, args.actions, args.memory)


def accuracy(agent: Any, args: argparse.Namespace, split: str, limit: int | None = None, batch: int = 1000,
             cache: dict | None = None) -> tuple[float, int]:
    """Accuracy (%) of the deterministic policy on the first `limit` images of `split` (all: None), each once;
    and the number of images. `cache` keeps the environments between calls."""
    cache = {} if cache is None else cache

    def get(size: int) -> SB3VecEnv:
        if (split, size) not in cache:
            cache[split, size] = make_env(args, split, size)
        return cache[split, size]

    images = get(batch).envs.num_images
    n = images if limit is None else min(limit, images)
    correct = 0
    for lo in range(0, n, batch):
        size = min(batch, n - lo)  # the last batch may be smaller: an env of its own size
        env = get(size)
        obs = env.reset(np.arange(lo, lo + size))
        state, starts = None, np.ones(size, bool)  # the LSTM's: a new episode
        for _ in range(env.glimpses):
            if args.policy == "lstm":
                action, state = agent.predict(obs, state=state, episode_start=starts, deterministic=True)
                starts = np.zeros(size, bool)
            else:
                masks = {"action_masks": env.action_masks()} if args.actions == "masked" else {}
                action, _ = agent.predict(obs, deterministic=True, **masks)
            obs, _, _, infos = env.step(action)
        correct += sum(info["correct"] for info in infos)
    return 100.0 * correct / n, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/ppo_sb3.py", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--env", default="glimpse/MNIST-v0", help="a registered glimpse id (default %(default)s)")
    add("--steps", type=int, default=50_000_000, help="environment steps of training at most (default %(default)s)")
    add("--minutes", type=float, default=30.0,
        help="training minutes at most, evaluation excluded (default %(default)s)")
    add("--envs", type=int, default=128, help="episodes side by side, one GlimpseVectorEnv (default %(default)s)")
    add("--rollout", type=int, default=4, help="episodes per environment in a PPO rollout (default %(default)s)")
    add("--batch-size", type=int, default=512, help="PPO minibatch in steps (default %(default)s)")
    add("--epochs", type=int, default=4, help="PPO epochs over each rollout (default %(default)s)")
    add("--lr", type=float, default=1e-3, help="Adam's learning rate (default %(default)s)")
    add("--ent-coef", type=float, default=0.01, help="entropy bonus (default %(default)s)")
    add("--hidden", type=int, nargs="+", default=[256],
        help="the MLP's layers, for the policy and again for the value (default %(default)s)")
    add("--grid", type=int, default=7, help="G: the G x G grid of locations over [-1, 1]^2 (default %(default)s)")
    add("--policy", choices=("mlp", "lstm"), default="mlp", help="(default %(default)s)")
    add("--actions", choices=("masked", "joint"), help="(default masked; with --policy lstm joint)")
    add("--reward", choices=("final", "every_step"), default="final", help="(default %(default)s)")
    add("--memory", choices=("episode", "last"), help="(default episode; with --policy lstm last)")
    add("--start", choices=("centre", "random"), default="centre", help="the first glimpse (default %(default)s)")
    add("--eval-every", type=int, default=500_000,
        help="environment steps between progress lines (default %(default)s)")
    add("--eval-images", type=int, help="validation images per progress line (default: all)")
    add("--out", type=Path, help="for curve.jsonl, metrics.json, model.zip (default outputs/ppo_sb3/<time>)")
    add("--seed", type=int, default=0, help="(default %(default)s)")
    add("--override", action="append", default=[],
        help="a python -m glimpse.train override, e.g. data.train_limit=5000; repeatable")
    args = parser.parse_args(argv)
    lstm = args.policy == "lstm"
    args.actions = args.actions or ("joint" if lstm else "masked")
    args.memory = args.memory or ("last" if lstm else "episode")
    if lstm and args.actions == "masked":
        parser.error("--policy lstm takes --actions joint: sb3-contrib's RecurrentPPO has no action masks")
    if args.reward == "every_step" and args.actions == "masked":
        parser.error("--reward every_step takes --actions joint: masked actions answer on the last step only")
    args.out = args.out or Path("outputs") / "ppo_sb3" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"
    try:
        from sb3_contrib import MaskablePPO, RecurrentPPO
        from stable_baselines3 import PPO
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError:
        print('ppo_sb3: stable-baselines3 and sb3-contrib are not installed; install the extra: '
              'pip install -e ".[sb3]"', file=sys.stderr)
        return 1

    try:
        train_env = make_env(args, "train", args.envs)
    except UserError as err:
        print(f"ppo_sb3: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    curve_path = args.out / "curve.jsonl"
    curve_path.write_text("")
    glimpses = train_env.glimpses
    if args.policy == "lstm":
        algo, policy, extra = RecurrentPPO, "MlpLstmPolicy", dict(lstm_hidden_size=args.hidden[0])
    else:
        algo, policy, extra = MaskablePPO if args.actions == "masked" else PPO, "MlpPolicy", {}
    # gamma 1: an episode is T steps and its only reward is the answer, which every location earned alike.
    policy_kwargs = dict(net_arch=list(args.hidden), activation_fn=torch.nn.ReLU, optimizer_kwargs=dict(fused=True),
                         **extra)
    rollout = args.rollout * glimpses
    agent = algo(policy, train_env, n_steps=rollout, batch_size=min(args.batch_size, rollout * args.envs),
                 n_epochs=args.epochs, learning_rate=args.lr, ent_coef=args.ent_coef, gamma=1.0, gae_lambda=0.95,
                 policy_kwargs=policy_kwargs, seed=args.seed, device="cpu", verbose=0)

    class Progress(BaseCallback):
        """Stops at --minutes; every --eval-every steps one line and one curve record, its evaluation off the clock."""

        def __init__(self) -> None:
            super().__init__()
            self.train_seconds, self.tic, self.next_eval, self.recorded = 0.0, 0.0, args.eval_every, -1
            self.correct = self.episodes = 0

        def _on_training_start(self) -> None:
            self.tic = time.perf_counter()

        def elapsed(self) -> float:
            return self.train_seconds + time.perf_counter() - self.tic

        def _on_step(self) -> bool:
            infos = self.locals["infos"]
            if "correct" in infos[0]:  # the episodes end together
                self.correct += sum(i["correct"] for i in infos)
                self.episodes += len(infos)
            out_of_time = self.elapsed() >= args.minutes * 60
            if self.num_timesteps >= self.next_eval or out_of_time:
                self.record()
            return not out_of_time

        def record(self) -> None:
            self.train_seconds = self.elapsed()
            val, _ = accuracy(self.model, args, "val", args.eval_images, cache=eval_envs)
            row = {"steps": self.num_timesteps, "minutes": round(self.train_seconds / 60, 3),
                   "train_accuracy": round(100.0 * self.correct / max(self.episodes, 1), 2),
                   "val_accuracy": round(val, 2)}
            self.correct = self.episodes = 0
            print(f"steps {row['steps']:>11,}  minutes {row['minutes']:7.2f}  train accuracy "
                  f"{row['train_accuracy']:6.2f}%  val accuracy {row['val_accuracy']:6.2f}%", flush=True)
            with open(curve_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self.recorded = self.num_timesteps
            self.next_eval = (self.num_timesteps // args.eval_every + 1) * args.eval_every
            self.tic = time.perf_counter()

    eval_envs: dict = {}
    progress = Progress()
    started = time.perf_counter()
    agent.learn(total_timesteps=args.steps, callback=progress)
    if progress.recorded != agent.num_timesteps:
        progress.record()
    agent.save(args.out / "model.zip")
    test, episodes = accuracy(agent, args, "test", cache=eval_envs)
    metrics = {"env": args.env, "algorithm": algo.__name__, "steps": agent.num_timesteps,
               "train_minutes": round(progress.train_seconds / 60, 3),
               "wall_minutes": round((time.perf_counter() - started) / 60, 3), "test_episodes": episodes,
               "test_accuracy": test, "test_error": 100.0 - test,
               "chance_accuracy": 100.0 / train_env.classes, "glimpses": glimpses,
               "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    text = json.dumps(metrics, indent=2) + "\n"
    checkpoint.atomic_write(args.out / "metrics.json", lambda f: f.write(text.encode()))
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
