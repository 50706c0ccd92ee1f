"""RAM trained by PPO through the torch vector environment, in one file: rollouts, advantages, clipped updates.

    python experiments/ppo_ram.py [glimpse.train overrides ...] [--num-envs 1024] [--minibatch 128]
        [--update-epochs 1] [--target-kl KL] [--clip-coef 0.2] [--gae-lambda 1.0] [--no-norm-adv] [--out DIR]
    python experiments/ppo_ram.py experiment=ram_cluttered60 trainer.epochs=20

The model is RAM as `python -m glimpse.train` builds it from the same overrides
(glimpse, core, location, baseline and action networks, retina, T, `model.std`,
Adam with `trainer.lr` and its schedule over `trainer.epochs`); only how the
location network learns changes. PPO in the manner of CleanRL's single-file
`ppo.py`, top to bottom in `loop`:

1. Rollout: `--num-envs` episodes in one `glimpse.env.GlimpseVectorEnv` (one
   sensor call per step for all of them, start uniform at random as RAM's
   training), played by RAM's own networks step by step. The policy is the
   location network's Gaussian N(mu_t, std^2 I) (T-1 decisions), its value the
   baseline network's b_t; the answer after glimpse T is the action network's
   argmax, and the reward its correctness (1 or 0), the environment's.
2. Advantages: GAE over the T-1 decisions with gamma 1 (`--gae-lambda`; 1, the
   default, is the episode's return minus b_t, RAM's REINFORCE advantage);
   normalised per minibatch unless `--no-norm-adv`.
3. Update: `--update-epochs` passes over the rollout in minibatches of
   `--minibatch` episodes. Each replays the episodes' stored glimpses through
   the glimpse and core networks (the core's backpropagation through time) and
   minimises RAM's hybrid loss with the REINFORCE term replaced by PPO's clipped
   one: CE(action network(h_T), label) + w_r * clipped policy loss + w_b *
   (b_t - return_t)^2, w_r and w_b `model.reinforce_weight` and
   `model.baseline_weight`. The location and baseline networks read h_t
   detached, as in RAM, so each term trains only its own networks. The label
   for the cross-entropy is the one the environment reports at the episode's
   end (`info["label"]`). One pass is the default: with RAM's narrow policy
   (std 0.15) a pass already moves it by an approximate KL of 0.02-0.04, and
   four passes, CleanRL's default, clip a third to a half of the ratios and
   lose what the first epoch learnt; `--target-kl` ends the passes early
   instead (experiments/results/ram/ppo/README.md).

A rollout plays each training image at most once: an epoch is a random order of
the training split cut into rollouts (the last, partial one dropped). The policy's
std is fixed (`model.std`, or its schedule `model.std_final`), so there is no entropy
bonus. The trainer's options for REINFORCE and its loop (`model.episodes_per_image`,
`model.baseline`, `model.greedy_fraction`, `trainer.precision`, `trainer.resume`) are
refused rather than silently ignored.

Why a script and not `model.policy_gradient=ppo` in `python -m glimpse.train`: the
trainer's step is one episode per image batch run inside the model (RAM's fused
episode, CUDA graphs, exact mid-epoch resumption of its generators), while PPO
collects episodes through the environment and takes several minibatch passes over
each rollout, a different loop. Made an option, train.py would hold two loops;
as a script, the loop reads top to bottom and everything else is the library's.

The run folder is the trainer's (docs/design.md, "Run folder"), so
`glimpse.evaluate`, `glimpse.visualize` and `glimpse.compare` read it: `.hydra/`
(config.yaml: the RAM config and a `ppo:` section; overrides.yaml), `train.log`,
`history.jsonl` (per epoch: train/loss/ce, train/loss/policy, train/loss/value,
train/reward, train/clip_fraction, train/approx_kl, train/passes (per rollout),
val/error, val/error_greedy, ...), `checkpoints/best.pt` (the best validation error) and `metrics.json`, whose
`model` is `ram_ppo`, a column of its own in `glimpse.compare`. No TensorBoard
events and no resumption. Validation every epoch and test once at the end with
the best checkpoint, by the sampled (`trainer.eval_samples` runs averaged) and
the greedy policy, as `python -m glimpse.train` scores them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from glimpse import checkpoint
from glimpse.config import compose_config, resolve_device
from glimpse.data import GlimpseData, seeded
from glimpse.env import GlimpseVectorEnv
from glimpse.errors import UserError
from glimpse.evaluate import evaluate_model
from glimpse.models import build_model
from glimpse.models.ram import RAM
from glimpse.train import Run, RunFolder, location_std, make_optimizer, score_on_test

log = logging.getLogger("ppo_ram")


@dataclass
class PPO:
    """PPO's own hyperparameters; everything else is the glimpse config's (overrides on the command line)."""

    num_envs: int = field(default=1024, metadata={"help": "episodes per rollout, side by side in one GlimpseVectorEnv"})
    minibatch: int = field(default=128, metadata={"help": "episodes per Adam step (trainer.batch_size's role)"})
    update_epochs: int = field(default=1, metadata={"help": "passes over each rollout (see the docstring's 3.)"})
    clip_coef: float = field(default=0.2, metadata={"help": "the policy ratio's clip range, 1 +- clip_coef"})
    gae_lambda: float = field(default=1.0, metadata={"help": "1: the episode's return minus b_t, RAM's advantage"})
    norm_adv: bool = field(default=True, metadata={"help": "advantages to zero mean, unit std per minibatch"})
    target_kl: float | None = field(default=None, metadata={
        "help": "end a rollout's passes early once a pass's mean approximate KL exceeds this (CleanRL's)"})


@dataclass
class Rollout:
    """num_envs episodes: what was seen, what was decided, and what came of it."""

    glimpses: Tensor  # (N, T, scales, C, patch, patch): rho(x, l_t)
    locations: Tensor  # (N, T, 2): l_t, clipped into [-1, 1]^2, as the glimpse network saw them
    samples: Tensor  # (N, T-1, 2): the unclipped Gaussian samples, whose log-probabilities PPO compares
    log_pi: Tensor  # (N, T-1): log pi(sample_t | h_t) under the rollout's weights
    values: Tensor  # (N, T-1): b_t under the rollout's weights
    reward: Tensor  # (N,): 1 for a correct answer
    labels: Tensor  # (N,): from the environment's last info


@torch.no_grad()
def rollout(model: RAM, envs: GlimpseVectorEnv, indices: Tensor, generator: torch.Generator) -> Rollout:
    """One episode per image at `indices` of the training split, RAM choosing where to look: one env step per
    glimpse."""
    obs, _ = envs.reset(options={"indices": indices})
    steps, n = model.glimpses, len(indices)
    glimpses, locations, samples, log_pi, values = [], [], [], [], []
    state = None
    for t in range(steps):
        glimpses.append(obs["glimpse"])
        locations.append(obs["location"])
        h, state = model.core(model.glimpse_net(obs["glimpse"], obs["location"]), state)
        if t < steps - 1:
            mu = model.location_net(h)
            sample = mu + model.location_net.std * torch.randn(n, 2, generator=generator, device=mu.device)
            samples.append(sample)
            log_pi.append(model.location_net.log_prob(sample, mu))
            values.append(model.baseline_net(h))
            action = {"location": sample, "prediction": torch.zeros(n, dtype=torch.int64, device=mu.device)}
        else:  # the location is unused on the last step
            action = {"location": obs["location"], "prediction": model.action_net(h).argmax(1)}
        obs, reward, _, _, info = envs.step(action)
    return Rollout(torch.stack(glimpses, 1), torch.stack(locations, 1), torch.stack(samples, 1),
                   torch.stack(log_pi, 1), torch.stack(values, 1), reward, info["label"])


def advantages(values: Tensor, reward: Tensor, gae_lambda: float) -> tuple[Tensor, Tensor]:
    """GAE with gamma 1 over the T-1 decisions of each episode, the reward arriving after the last: (advantages,
    returns), each (N, T-1). With lambda 1 the advantage is reward - b_t and the return the reward."""
    next_values = torch.cat((values[:, 1:], reward[:, None]), 1)  # after the last decision: the outcome itself
    deltas = next_values - values
    adv = torch.zeros_like(values)
    running = torch.zeros_like(reward)
    for t in reversed(range(values.shape[1])):
        running = deltas[:, t] + gae_lambda * running
        adv[:, t] = running
    return adv, adv + values


def replay(model: RAM, glimpses: Tensor, locations: Tensor) -> list[Tensor]:
    """h_1 .. h_T of stored episodes through the current glimpse and core networks, differentiable."""
    state, hs = None, []
    for t in range(glimpses.shape[1]):
        h, state = model.core(model.glimpse_net(glimpses[:, t], locations[:, t]), state)
        hs.append(h)
    return hs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="experiments/ppo_ram.py", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="python -m glimpse.train overrides: experiment=ram_mnist ...")
    for f in dataclasses.fields(PPO):
        flag, text = "--" + f.name.replace("_", "-"), f"{f.metadata['help']} (default %(default)s)"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=text)
        else:
            kind = float if f.type == "float | None" else type(f.default)
            parser.add_argument(flag, type=kind, default=f.default, help=text)
    parser.add_argument("--out", type=Path, help="the run folder (default outputs/<day>/<time>_ram_ppo_<data>)")
    args = parser.parse_args(argv)
    ppo = PPO(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PPO)})
    try:
        cfg = compose_config(args.overrides)
        if cfg.model.name != "ram":
            raise UserError(f"model={cfg.model.name}; this script trains RAM (model=ram)")
        if ppo.num_envs % ppo.minibatch or ppo.minibatch < 2:
            raise UserError(f"--num-envs {ppo.num_envs} must be a multiple of --minibatch {ppo.minibatch} (>= 2)")
        if cfg.model.glimpses < 2:
            raise UserError("model.glimpses=1 leaves RAM no location to choose")
        # REINFORCE's training options: this loop has none of them, so a run must not appear to use one.
        unused = {"model.episodes_per_image": 1, "model.baseline": "learned", "model.greedy_fraction": 0.0,
                  "trainer.precision": "fp32", "trainer.resume": False, "trainer.val_every": 1}
        changed = [f"{k}={OmegaConf.select(cfg, k)}" for k, v in unused.items()
                   if OmegaConf.select(cfg, k, default=v) != v]
        if changed:
            raise UserError(f"{', '.join(changed)}: python -m glimpse.train's options, not this script's")
        return train(cfg, ppo, args.overrides, args.out)
    except UserError as err:
        print(f"ppo_ram: {err}", file=sys.stderr)
        return 2


def train(cfg: DictConfig, ppo: PPO, overrides: list[str], out: Path | None) -> int:
    """Data, RAM, Adam, the environment and the run folder; then `loop` trains. Returns the exit code."""
    m = cfg.model
    device = resolve_device(cfg.device)
    now = datetime.now()
    torch.manual_seed(cfg.seed)
    data = GlimpseData(cfg.data, cfg.seed, device)
    model = build_model(cfg, data.image_shape, data.classes).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    s = cfg.sensor
    envs = GlimpseVectorEnv(ppo.num_envs, data=data, split="train", seed=cfg.seed, glimpses=m.glimpses,
                            patch=s.patch, scales=s.scales, scale_factor=s.scale_factor, resize=s.resize,
                            start="random", tensors=True)
    envs.reset(seed=cfg.seed)  # seeds the environment's draws: start locations and training canvases
    rollouts_per_epoch = len(data.train) // ppo.num_envs
    if rollouts_per_epoch == 0:
        raise UserError(f"--num-envs {ppo.num_envs} exceeds the {len(data.train)} training images")
    folder = RunFolder(out or Path("outputs") / f"{now:%Y-%m-%d}" / f"{now:%H-%M-%S-%f}_ram_ppo_{cfg.data.name}")
    folder.prepare(resume=False)
    (folder.path / ".hydra").mkdir(parents=True, exist_ok=True)
    record = OmegaConf.create({**OmegaConf.to_container(cfg, resolve=True), "ppo": dataclasses.asdict(ppo)})
    OmegaConf.save(record, folder.path / ".hydra" / "config.yaml")
    (folder.path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    handler = logging.FileHandler(folder.path / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    try:
        return loop(cfg, ppo, overrides, folder, data, model, optimizer, scheduler, envs, rollouts_per_epoch)
    finally:
        log.removeHandler(handler)
        handler.close()


def loop(cfg: DictConfig, ppo: PPO, overrides: list[str], folder: RunFolder, data: GlimpseData, model: RAM,
         optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, envs: GlimpseVectorEnv,
         rollouts_per_epoch: int) -> int:
    """PPO's epochs (rollout, advantages, update), validation after each, the test once at the end."""
    t, m, device = cfg.trainer, cfg.model, data.device
    per_pass = ppo.num_envs // ppo.minibatch  # Adam steps in one pass over a rollout
    run = Run(cfg, folder, device, data, model, optimizer, scheduler, rollouts_per_epoch * ppo.update_epochs * per_pass)
    progress = run.progress
    steps = 0  # Adam steps taken: fewer than update_epochs passes' worth once --target-kl ends passes early
    log.info("PPO %s; RAM %s", json.dumps(dataclasses.asdict(ppo)), " ".join(overrides) or "(defaults)")

    for epoch in range(t.epochs):
        model.train()
        model.location_net.std.fill_(location_std(m, t.epochs, epoch))
        gen = seeded(cfg.seed, "ppo", epoch, device=device)
        order = torch.randperm(len(data.train), generator=gen, device=device)
        sums: dict[str, float] = {}
        tic = time.perf_counter()
        for r in range(rollouts_per_epoch):
            # 1. Rollout
            batch = rollout(model, envs, order[r * ppo.num_envs : (r + 1) * ppo.num_envs], gen)
            # 2. Advantages
            adv_all, returns = advantages(batch.values, batch.reward, ppo.gae_lambda)
            # 3. Update
            terms: dict[str, Tensor] = {}
            updates = 0
            for _ in range(ppo.update_epochs):
                pass_kl = torch.zeros((), device=device)
                for mb in torch.randperm(ppo.num_envs, generator=gen, device=device).split(ppo.minibatch):
                    hs = replay(model, batch.glimpses[mb], batch.locations[mb])
                    ce = F.cross_entropy(model.action_net(hs[-1]), batch.labels[mb])
                    states = torch.stack(hs[:-1], 1)  # (B, T-1, hidden): where each decision was taken
                    new_log_pi = model.location_net.log_prob(batch.samples[mb], model.location_net(states))
                    log_ratio = new_log_pi - batch.log_pi[mb]
                    ratio = log_ratio.exp()
                    adv = adv_all[mb]
                    if ppo.norm_adv:
                        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    policy_loss = torch.max(-adv * ratio,
                                            -adv * ratio.clamp(1 - ppo.clip_coef, 1 + ppo.clip_coef)).mean()
                    value_loss = F.mse_loss(model.baseline_net(states), returns[mb])
                    loss = ce + m.reinforce_weight * policy_loss + m.baseline_weight * value_loss
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if t.clip_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
                    optimizer.step()
                    with torch.no_grad():
                        step_terms = {"loss/ce": ce, "loss/policy": policy_loss, "loss/value": value_loss,
                                      "clip_fraction": ((ratio - 1).abs() > ppo.clip_coef).float().mean(),
                                      "approx_kl": ((ratio - 1) - log_ratio).mean()}  # CleanRL's estimator
                    for k, v in step_terms.items():
                        terms[k] = terms.get(k, 0) + v.detach()
                    pass_kl += step_terms["approx_kl"]
                    updates += 1
                if ppo.target_kl is not None and pass_kl.item() / per_pass > ppo.target_kl:
                    break
            steps += updates
            terms = {k: v / updates for k, v in terms.items()}
            terms["reward"] = batch.reward.mean()
            for k, v in terms.items():  # one sync per rollout
                sums[k] = sums.get(k, 0.0) + v.item()
            sums["passes"] = sums.get("passes", 0.0) + updates / per_pass
        seconds = time.perf_counter() - tic
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        # Validation, as python -m glimpse.train does it every epoch.
        progress["train_seconds"] += seconds
        progress["images_seen"] += rollouts_per_epoch * ppo.num_envs
        val = evaluate_model(model, data.eval_batches("val", t.eval_batch_size), t.eval_samples,
                             seeded(cfg.seed, "eval", "val", device=device), boxes=data.eval_boxes("val"))
        scalars = {f"train/{k}": v / rollouts_per_epoch for k, v in sums.items()}
        scalars["train/error"] = 100.0 * (1 - scalars["train/reward"])
        scalars.update({"train/lr": lr, "train/location_std": model.location_net.std.item(),
                        "train/images_per_second": rollouts_per_epoch * ppo.num_envs / seconds,
                        **{f"val/{k}": v for k, v in val.items()}})
        if val["error"] < progress["best_val_error"]:
            progress["best_val_error"], progress["best_epoch"] = val["error"], epoch + 1
            checkpoint.save({"config": run.config, "epoch": epoch + 1, "model": model.state_dict(),
                             "val_error": val["error"]}, folder.best)
        folder.append_history({"epoch": epoch + 1, "step": steps,
                               "train_seconds": progress["train_seconds"], "images_seen": progress["images_seen"],
                               "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **scalars})
        log.info("epoch %d/%d: train ce %.4f, reward %.3f, clip fraction %.3f, val error %.2f%% (greedy %.2f%%), "
                 "%.0f images/s", epoch + 1, t.epochs, scalars["train/loss/ce"], scalars["train/reward"],
                 scalars["train/clip_fraction"], val["error"], val["error_greedy"],
                 scalars["train/images_per_second"])

    metrics = score_on_test(run)
    metrics.update(model="ram_ppo", policy_gradient="ppo")
    checkpoint.atomic_write(folder.metrics, lambda f: f.write((json.dumps(metrics, indent=2) + "\n").encode()))
    log.info("test error %.2f%% (greedy %.2f%%) with the best validation checkpoint (epoch %d, val error %.2f%%); "
             "%.0f s of training", metrics["test_error"], metrics["test_error_greedy"], metrics["best_epoch"],
             metrics["val_error_best"], metrics["train_seconds"])
    print(json.dumps({k: metrics[k] for k in ("model", "data", "seed", "test_error", "test_error_greedy",
                                              "val_error_best", "train_seconds")} | {"run": str(folder.path)}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    sys.exit(main())
