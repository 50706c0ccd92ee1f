"""`python -m glimpse.train [overrides]`: train one model, write its run folder (docs/design.md).

The Hydra entry is thin; `train(cfg, run_dir)` does the work and can be called directly.
The loop, top to bottom: per epoch, fresh training canvases and policy noise from
generators keyed by (seed, epoch); Adam steps on the hybrid loss; evaluation on
validation (sampled and greedy policy); `last.pt` every epoch and `best.pt` on a
new best validation error. At the end the best checkpoint is scored once on test.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from glimpse import checkpoint
from glimpse.accounting import macs_per_image, params
from glimpse.config import (
    CONF_DIR,
    RESULT_NEUTRAL_KEYS,
    check_overrides,
    compose_config,
    resolve_device,
    validate,
)
from glimpse.data import GlimpseData, seeded
from glimpse.errors import UserError
from glimpse.evaluate import evaluate_model, load_weights
from glimpse.models import build_model
from glimpse.models.common import Episode
from glimpse.objectives import hybrid_loss, repeat_episodes
from glimpse.visual import hparam_metrics, log_hparams, log_pictures

log = logging.getLogger(__name__)


def make_optimizer(model: torch.nn.Module,
                   cfg: DictConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam (fused kernels: one call updates every tensor) with a per-epoch cosine or constant schedule; with
    `trainer.weight_decay` > 0, AdamW: the weight matrices decay, biases and other vectors do not."""
    decay = cfg.trainer.get("weight_decay", 0.0)
    if decay:
        params = list(model.parameters())
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.trainer.lr, fused=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr, fused=True)
    if cfg.trainer.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.trainer.epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    return opt, sched


def location_std(m: DictConfig, epochs: int, epoch: int) -> float:
    """The location policy's std for epoch `epoch` (0-based): `model.std`, or with `model.std_final` a cosine from
    `model.std` at the first epoch to `model.std_final` at the last, the shape of the learning-rate schedule."""
    final = m.get("std_final")
    if final is None or epochs < 2:
        return float(m.std if final is None else final)
    return final + (m.std - final) * (1 + math.cos(math.pi * epoch / (epochs - 1))) / 2


def policy_std(model: torch.nn.Module) -> torch.Tensor | None:
    """The std buffer of RAM's Gaussian location policy; None for a model without one (dram's location network is a
    plain Linear)."""
    return getattr(getattr(model, "location_net", None), "std", None)


def mixed_precision(device: torch.device, precision: str = "fp32", cache: bool = True) -> torch.autocast:
    """`trainer.precision`'s context for a training step's forward and loss: bf16 is torch.autocast's bfloat16
    (matrix products in bfloat16; weights, gradients, Adam and the loss in float32), fp32 changes nothing.
    `cache=False` inside a CUDA graph capture, whose casts must not outlive it."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=cache)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
               generator: torch.Generator, m: DictConfig, precision: str = "fp32",
               clip_grad_norm: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool]:
    """One Adam step on the hybrid loss of `model.episodes_per_image` (K) episodes of each image (one by default);
    skipped when the loss or a gradient is not finite.

    The K episodes of an image are K rows of one batch (`repeat_episodes`), so every model, RAM's fused path
    included, runs them as it runs any batch. Returns the loss, its terms (detached) and whether the weights were
    updated. `glimpse.bench` times this very function (the loop's running sums of the terms, a few small
    additions, it does not).
    """
    images, labels = repeat_episodes(images, labels, m.get("episodes_per_image", 1))
    optimizer.zero_grad(set_to_none=True)
    loss, terms, bad = backward(model, lambda: model(images, generator=generator), labels, m, precision,
                                clip_grad_norm=clip_grad_norm)
    finite = not bool(bad)  # one sync per step: a NaN/inf must never reach the weights or the checkpoints
    if finite:
        optimizer.step()
    return loss, terms, finite


def backward(model: torch.nn.Module, episode: Callable[[], Episode], labels: torch.Tensor, m: DictConfig,
             precision: str = "fp32", cache: bool = True,
             clip_grad_norm: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """The hybrid loss of `episode()` (run under `mixed_precision`), backpropagated: the loss (detached), its terms,
    and `nonfinite`. With `clip_grad_norm` (`trainer.clip_grad_norm`) the gradient is then scaled down to that
    total norm if it is larger, and its norm before clipping is the term `grad_norm`."""
    with mixed_precision(labels.device, precision, cache):
        loss, terms = hybrid_loss(episode(), labels, m.get("reinforce_weight", 0.0), m.get("baseline_weight", 0.0),
                                  m.get("baseline", "learned"), m.get("episodes_per_image", 1))
    loss.backward()
    loss = loss.detach()  # nothing may keep this step's autograd graph (on CUDA: its streams) alive into the next
    bad = nonfinite(model, loss)
    if clip_grad_norm is not None:
        # After the check, which must see the gradient as backward left it: clipping by a NaN or infinite norm
        # would turn every gradient into NaN or zeros. No host sync, so a CUDA graph can hold it.
        terms["grad_norm"] = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    return loss, terms, bad


def nonfinite(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    """Whether `loss` or any gradient is NaN or infinite, as a device tensor (no sync). A sum is finite
    only if every term is (or it overflows, as a norm would), and costs half of get_total_norm."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return ~torch.isfinite(torch.stack([g.sum() for g in grads]).sum() + loss.detach())


class GraphedStep:
    """`train_step` for RAM on CUDA, replayed as one captured CUDA graph (`trainer.cuda_graph`).

    At batch 128 a step is ~270 small kernels whose launches cost the CPU ~7x the GPU's time
    (README, "On a GPU"); a graph launches them all at once. The numbers are
    train_step's: the batch and the episode's draws (`RAM.draws`, from the same generator in the
    same order) are copied into the graph's input buffers and the learning rate into a device
    tensor before every replay, and a non-finite step is skipped on the device by fused Adam's
    `found_inf` (weights, moments and step count untouched), as a graph cannot branch. The first
    WARMUP full batches step uncaptured on a side stream (autograd's and Adam's state, the sensor's
    constants), as capture requires; a batch of another size (an epoch's last) steps eagerly.
    With `model.episodes_per_image` K > 1 the graph's batch is the K x B episodes `train_step` would run.
    """

    WARMUP = 3

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, m: DictConfig,
                 precision: str = "fp32", clip_grad_norm: float | None = None):
        self.model, self.optimizer, self.m, self.precision = model, optimizer, m, precision
        self.clip_grad_norm = clip_grad_norm
        device = next(model.parameters()).device
        self.lr, self.found_inf = torch.zeros((), device=device), torch.zeros((), device=device)
        self.side = torch.cuda.Stream(device)  # the warm-up's stream
        self.graph: torch.cuda.CUDAGraph | None = None
        self.steps = 0
        self.shape: torch.Size | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor], bool]:
        if self.shape is None:  # the first batch of a run is a full one
            self.shape = images.shape
        if images.shape != self.shape:
            return train_step(self.model, self.optimizer, images, labels, generator, self.m, self.precision,
                              self.clip_grad_norm)
        images, labels = repeat_episodes(images, labels, self.m.get("episodes_per_image", 1))
        start, noise = self.model.draws(len(labels), images.device, generator)
        if self.steps == 0:  # the graph's inputs, each in its own dtype (the images' is uint8, the draws' float)
            self.images, self.labels = torch.empty_like(images), torch.empty_like(labels)
            self.start, self.noise = torch.empty_like(start), torch.empty_like(noise)
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.start.copy_(start)
        self.noise.copy_(noise)
        self.lr.fill_(self.optimizer.param_groups[0]["lr"])
        if self.graph is not None:
            self.graph.replay()
            loss, terms = self.loss, self.terms
        elif self.steps < self.WARMUP:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                self.optimizer.zero_grad(set_to_none=True)
                loss, terms = self._step()
            torch.cuda.current_stream().wait_stream(self.side)
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.loss, self.terms = loss, terms = self._step(capturing=True)
            self.graph.replay()  # capture records the step without running it
        self.steps += 1
        return loss, terms, not bool(self.found_inf)

    def _step(self, capturing: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """train_step's body without a host decision: the episode, the loss, backward, Adam (a no-op if not finite)."""
        loss, terms, bad = backward(self.model, lambda: self.model.episode(self.images, self.start, self.noise),
                                    self.labels, self.m, self.precision, cache=False,
                                    clip_grad_norm=self.clip_grad_norm)
        self.found_inf.copy_(bad)
        # Adam reads the device lr and found_inf only here; its groups keep float lrs for the schedule and checkpoints.
        groups = self.optimizer.param_groups
        saved = [(g["lr"], g["capturable"]) for g in groups]
        for g in groups:
            g["lr"], g["capturable"] = self.lr, capturing
        self.optimizer.found_inf = self.found_inf
        try:
            self.optimizer.step()
        finally:
            del self.optimizer.found_inf
            for g, (lr, capturable) in zip(groups, saved):
                g["lr"], g["capturable"] = lr, capturable
        return loss, terms


def training_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: DictConfig, device: torch.device):
    """The step the loop calls as take_step(images, labels, generator): GraphedStep for RAM on CUDA with
    `trainer.cuda_graph`, else `train_step`."""
    clip = cfg.trainer.get("clip_grad_norm")
    if device.type == "cuda" and cfg.trainer.get("cuda_graph", False) and hasattr(model, "draws"):
        return GraphedStep(model, optimizer, cfg.model, cfg.trainer.precision, clip)
    return functools.partial(train_step, model, optimizer, m=cfg.model, precision=cfg.trainer.precision,
                             clip_grad_norm=clip)


# Keys added after run folders were written without them: the value that computes what those runs did.
ADDED_KEYS = {"trainer.precision": "fp32", "model.fused": True, "model.episodes_per_image": 1,
              "model.baseline": "learned", "trainer.clip_grad_norm": None, "model.std_final": None,
              "model.greedy_fraction": 0.0, "trainer.weight_decay": 0.0, "model.dropout": 0.0,
              "trainer.val_every": 1}


class NonFiniteError(UserError):
    """A NaN or infinite loss or gradient with trainer.on_nonfinite=stop."""


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train `cfg`'s model on `cfg`'s data; write checkpoints, TensorBoard scalars, history.jsonl and metrics.json
    to `run_dir` (docs/design.md, "Run folder"). Returns the metrics."""
    validate(cfg)
    t = cfg.trainer
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    folder = RunFolder(Path(run_dir) if run_dir is not None else Path.cwd())
    resume = folder.prepare(t.resume)
    data = GlimpseData(cfg.data, cfg.seed, device)
    model = build_model(cfg, data.image_shape, data.classes).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    run = Run(cfg, folder, device, data, model, optimizer, scheduler, math.ceil(len(data.train) / t.batch_size))
    if resume:
        run.restore()

    # purge_step: events the killed run wrote after its last checkpoint are dropped, so the curves stay continuous.
    # Events are written only at epoch ends (step (epoch + 1) * steps_per_epoch), after the epoch's last mid-epoch
    # checkpoint, which may hold batch == steps_per_epoch: so keep what the last finished epoch wrote, purge the rest.
    writer = SummaryWriter(log_dir=str(folder.path),
                           purge_step=run.progress["epoch"] * run.steps_per_epoch + 1 if t.resume else None)
    folder.keep_history(run.progress["epoch"])
    shown = next(data.eval_batches("val", t.visual_images))  # the same validation images in every picture
    take_step = training_step(model, optimizer, cfg, device)
    bar = tqdm(range(run.progress["epoch"], t.epochs), initial=run.progress["epoch"], total=t.epochs,
               desc=f"{cfg.model.name} {cfg.data.name}", disable=not t.progress, dynamic_ncols=True)
    for epoch in bar:
        sums, n, seconds, skipped = train_epoch(run, epoch, take_step)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        scalars = end_epoch(run, epoch, sums, n, seconds, skipped, lr, writer, shown)
        bar.set_postfix(ce=f"{scalars.get('train/loss/ce', math.nan):.3f}",
                        val_err=f"{scalars.get('val/error', math.nan):.2f}",
                        img_s=f"{scalars['train/images_per_second']:,.0f}")

    metrics = score_on_test(run)
    # The test/ scalars one step after the last epoch's: a run killed before metrics.json resumes with
    # purge_step = that epoch's step + 1, which drops them, so they are written once, not twice.
    log_hparams(writer, cfg, hparam_metrics(metrics), t.epochs * run.steps_per_epoch + 1)
    writer.close()
    checkpoint.atomic_write(folder.metrics, lambda f: f.write((json.dumps(metrics, indent=2) + "\n").encode()))
    log.info("test error %.2f%% (greedy %.2f%%) with the best validation checkpoint (epoch %d, val error %.2f%%); "
             "%.0f s of training", metrics["test_error"], metrics["test_error_greedy"], metrics["best_epoch"],
             metrics["val_error_best"], metrics["train_seconds"])
    return metrics


class RunFolder:
    """A run folder's files (docs/design.md, "Run folder")."""

    def __init__(self, path: Path):
        self.path = path
        self.last, self.best = path / "checkpoints" / "last.pt", path / "checkpoints" / "best.pt"
        self.metrics, self.history = path / "metrics.json", path / "history.jsonl"

    def prepare(self, resume: bool) -> bool:
        """Whether to continue the folder's run; refuses to start a new run over a finished or started one."""
        if not resume and (self.last.exists() or self.metrics.exists()):
            raise UserError(f"run folder {self.path} already holds a run; continue it with trainer.resume=true "
                            "or start a new one in another folder (hydra.run.dir)")
        if resume and self.last.parent.is_dir():
            # a killed writer's leftovers; their targets are intact
            checkpoint.remove_stale_temp_files(self.last.parent)
        if resume and not self.last.is_file():  # killed before its first checkpoint (or a new folder): start over
            log.warning("trainer.resume=true but %s does not exist: starting from the beginning", self.last)
            return False
        return resume

    def keep_history(self, epochs: int) -> None:
        """Drop history.jsonl's records after epoch `epochs`: a killed run wrote them after its last checkpoint."""
        if not self.history.exists():
            return
        kept = [line for line in self.history.read_text().splitlines() if _epoch_of(line) <= epochs]
        checkpoint.atomic_write(self.history, lambda f: f.write("".join(f"{line}\n" for line in kept).encode()))

    def append_history(self, record: dict) -> None:
        with open(self.history, "a") as f:
            f.write(json.dumps(record) + "\n")


def _epoch_of(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):  # a line cut short by a kill
        return math.inf


class Run:
    """What the loop's parts share: config, folder, data, model, optimiser and the progress a resumption needs."""

    def __init__(self, cfg: DictConfig, folder: RunFolder, device: torch.device, data: GlimpseData,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, steps_per_epoch: int):
        self.cfg, self.folder, self.device, self.data = cfg, folder, device, data
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.steps_per_epoch = steps_per_epoch
        self.config = OmegaConf.to_container(cfg, resolve=True)
        # Everything a resumed run needs to continue exactly where this one stopped, even mid-epoch.
        self.progress = {"epoch": 0, "batch": 0, "generator": None, "sums": {}, "images": 0, "seconds": 0.0,
                         "skipped": 0, "best_val_error": math.inf, "best_epoch": -1, "train_seconds": 0.0,
                         "images_seen": 0}
        self.last_saved = time.monotonic()

    def restore(self) -> None:
        """Continue from checkpoints/last.pt: weights, Adam, schedule, RNG and progress; refused if the config differs
        in a key that changes results."""
        path = self.folder.last
        # Loaded on the CPU: the RNG states must stay CPU byte tensors; weights and Adam's state move as they load.
        state = checkpoint.load(path, map_location="cpu",
                                required=("config", "model", "optimizer", "scheduler", "progress"))
        changed = checkpoint.config_differences(state["config"], self.config, ignore=RESULT_NEUTRAL_KEYS,
                                                absent=ADDED_KEYS)
        if changed:
            raise UserError(f"checkpoint {path} was written by a different config; "
                            f"differing keys: {'; '.join(changed)}")
        load_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.progress = state["progress"]

    def save_last(self, epoch: int, batch: int = 0, generator: torch.Generator | None = None, sums: dict | None = None,
                  images: int = 0, seconds: float = 0.0, skipped: int = 0) -> None:
        """checkpoints/last.pt: the state after `batch` batches of epoch `epoch` (0-based; batch 0: the epoch's
        start)."""
        self.progress.update(epoch=epoch, batch=batch,
                             generator=generator.get_state() if generator is not None else None,
                             sums=dict(sums or {}), images=images, seconds=seconds, skipped=skipped)
        checkpoint.save({"config": self.config, "model": self.model.state_dict(),
                         "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "rng": {"torch": torch.get_rng_state()},
                         "progress": self.progress, "epoch": epoch}, self.folder.last)
        self.last_saved = time.monotonic()


def train_epoch(run: Run, epoch: int, take_step: Callable) -> tuple[dict[str, torch.Tensor], int, float, int]:
    """One epoch's Adam steps (from the batch a resumed run reached): the loss terms summed over images, the images,
    the training seconds and the skipped batches."""
    t, progress = run.cfg.trainer, run.progress
    # Canvases and policy noise of an epoch depend only on (seed, epoch) and the batch reached: resuming replays them.
    gen = seeded(run.cfg.seed, "train", epoch, device=run.device)
    start = progress["batch"]
    batches = run.data.train_batches(t.batch_size, gen, start, progress["generator"])
    sums: dict[str, torch.Tensor] = progress["sums"]
    n, seconds, skipped = progress["images"], progress["seconds"], progress["skipped"]
    every = t.checkpoint_every_minutes * 60
    run.model.train()
    std = policy_std(run.model)
    if std is not None:  # in place: a captured CUDA graph reads the buffer
        std.fill_(location_std(run.cfg.model, t.epochs, epoch))
    tic = time.perf_counter()
    for batch, (images, labels) in enumerate(batches, start=start + 1):
        loss, terms, finite = take_step(images, labels, gen)
        if not finite:
            if t.on_nonfinite == "stop":
                last = run.folder.last
                raise NonFiniteError(
                    f"training stopped: non-finite loss or gradient (loss {loss.item()}) at epoch {epoch + 1}, "
                    f"batch {batch}; the last good checkpoint is {last if last.exists() else 'not written yet'}; "
                    "lower trainer.lr, or set trainer.on_nonfinite=skip to skip such batches")
            skipped += 1
            continue
        for k, v in terms.items():  # summed on the device: no sync per step
            sums[k] = sums.get(k, 0) + v.detach() * len(labels)
        n += len(labels)
        if every and time.monotonic() - run.last_saved >= every:
            run.save_last(epoch, batch, gen, sums, n, seconds + time.perf_counter() - tic, skipped)
    return sums, n, seconds + time.perf_counter() - tic, skipped


def end_epoch(run: Run, epoch: int, sums: dict[str, torch.Tensor], n: int, seconds: float, skipped: int, lr: float,
              writer: SummaryWriter, shown: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """Validation (every `trainer.val_every` epochs and after the last), the epoch's scalars (TensorBoard and
    history.jsonl), pictures, best.pt and last.pt, the log line."""
    cfg, t, progress = run.cfg, run.cfg.trainer, run.progress
    progress["train_seconds"] += seconds
    progress["images_seen"] += n
    step = (epoch + 1) * run.steps_per_epoch
    boxes = run.data.eval_boxes("val")
    validating = (epoch + 1) % t.get("val_every", 1) == 0 or epoch + 1 == t.epochs
    val = {}
    if validating:
        val = evaluate_model(run.model, run.data.eval_batches("val", t.eval_batch_size), t.eval_samples,
                             seeded(cfg.seed, "eval", "val", device=run.device), boxes=boxes)
    scalars = {f"train/{k}": v.item() / max(n, 1) for k, v in sums.items()}
    if "train/reward" in scalars:
        scalars["train/error"] = 100.0 * (1 - scalars["train/reward"])
    scalars.update({"train/lr": lr, "train/images_per_second": n / max(seconds, 1e-9), "train/skipped_batches": skipped,
                    **{f"val/{k}": v for k, v in val.items()}})
    std = policy_std(run.model)
    if std is not None:
        scalars["train/location_std"] = std.item()
    for k, v in scalars.items():
        writer.add_scalar(k, v, step)
    if t.visual_every and ((epoch + 1) % t.visual_every == 0 or epoch + 1 == t.epochs):
        tic = time.perf_counter()
        log_pictures(writer, run.model, *shown, step, class_names=run.data.class_names,
                     targets=None if boxes is None else boxes[: len(shown[1])])
        progress["picture_seconds"] = progress.get("picture_seconds", 0.0) + time.perf_counter() - tic

    if validating and val["error"] < progress["best_val_error"]:
        progress["best_val_error"], progress["best_epoch"] = val["error"], epoch + 1
        checkpoint.save({"config": run.config, "epoch": epoch + 1, "model": run.model.state_dict(),
                         "val_error": val["error"]}, run.folder.best)
    # The record before the checkpoint: killed between the two, the run resumes from the epoch before and
    # keep_history drops the record; the other way round, the epoch would be missing for good.
    run.folder.append_history({"epoch": epoch + 1, "step": step, "train_seconds": progress["train_seconds"],
                               "images_seen": progress["images_seen"],
                               "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **scalars})
    run.save_last(epoch + 1)
    checked = f", val error {val['error']:.2f}% (greedy {val['error_greedy']:.2f}%)" if validating else ""
    log.info("epoch %d/%d: train ce %.4f%s, %.0f images/s", epoch + 1, t.epochs,
             scalars.get("train/loss/ce", math.nan), checked, scalars["train/images_per_second"])
    writer.flush()
    return scalars


def score_on_test(run: Run) -> dict:
    """Score the checkpoint chosen on validation once on the test set; the run's metrics.json content."""
    cfg, t, m, device, data, model, progress = (run.cfg, run.cfg.trainer, run.cfg.model, run.device, run.data,
                                                run.model, run.progress)
    best = checkpoint.load(run.folder.best, map_location=device)
    load_weights(model, best["model"], run.folder.best)
    result = evaluate_model(model, data.eval_batches("test", t.eval_batch_size), t.eval_samples,
                            seeded(cfg.seed, "eval", "test", device=device), count_pixels=True,
                            boxes=data.eval_boxes("test"))
    probe = next(data.eval_batches("test", 8))[0]
    inference = inference_images_per_second(model, data, t.eval_batch_size)
    return {
        "model": m.name, "data": cfg.data.name, "seed": cfg.seed,
        "test_error": result["error"], "test_error_greedy": result["error_greedy"],
        "test_error_single": result["error_single"],
        "val_error_best": progress["best_val_error"], "best_epoch": progress["best_epoch"], "epochs": t.epochs,
        "train_seconds": progress["train_seconds"],
        "train_images_per_second": progress["images_seen"] / max(progress["train_seconds"], 1e-9),
        "inference_images_per_second": inference, "picture_seconds": progress.get("picture_seconds", 0.0),
        "params": params(model), "macs_per_image": macs_per_image(model, probe),
        "pixels_per_image": result["pixels_per_image"],
        # null where they do not apply: data without a canvas, models that do not move glimpses
        "on_target": result.get("on_target"), "on_target_greedy": result.get("on_target_greedy"),
        "on_target_chance": result.get("on_target_chance"),
        "glimpses": m.get("glimpses"), "device": str(device), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }


@torch.no_grad()
def inference_images_per_second(model: torch.nn.Module, data: GlimpseData, batch_size: int) -> float:
    """Greedy-policy classification speed on test images (one warm-up batch excluded)."""
    model.eval()
    batches = list(data.eval_batches("test", batch_size))[:4]
    model(batches[0][0], greedy=True)
    tic = time.perf_counter()
    for images, _ in batches:
        model(images, greedy=True)
    return sum(len(x) for x, _ in batches) / (time.perf_counter() - tic)


def _discard_if_empty(run_dir: Path) -> None:
    """A run stopped by bad input before it trained leaves no folder behind (only Hydra's record was in it)."""
    if (not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
            and not list(run_dir.glob("events.out.tfevents.*"))):
        shutil.rmtree(run_dir, ignore_errors=True)


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def main(cfg: DictConfig) -> None:
        hc = HydraConfig.get()
        run_dir = Path(hc.runtime.output_dir)
        try:
            metrics = train(cfg, run_dir)
        except UserError as err:
            if hc.mode == RunMode.MULTIRUN:
                log.error("%s", err)  # into the job's train.log: glimpse.compare lists the failed run with this line
                raise  # every launcher records it, runs the other jobs and exits non-zero at the end
            _discard_if_empty(run_dir)
            print(f"glimpse.train: {err}", file=sys.stderr)
            sys.exit(3 if isinstance(err, NonFiniteError) else 2)
        except Exception:
            log.exception("run failed")  # the job's train.log says why
            raise
        print(json.dumps({k: metrics[k] for k in ("model", "data", "seed", "test_error", "test_error_greedy",
                                                  "val_error_best", "train_seconds")}))

    main()


def preflight(args: list[str]) -> None:
    """Compose and check the config of a single run before Hydra makes its folder: a bad value costs nothing."""
    from glimpse.config import option_file, search_path

    check_overrides(args)
    multirun = any(a in ("-m", "--multirun") for a in args)
    searchpath = search_path(args)
    for arg in args:
        preset = option_file("experiment", arg.partition("=")[2], searchpath) if arg.startswith("experiment=") else None
        if preset is not None and not multirun and "sweeper:" in preset.read_text():
            raise UserError(f"experiment={preset.stem} is a sweep preset: run it with -m "
                            f"(python -m glimpse.train -m {arg})")
    if any(a.startswith("-") for a in args):
        return  # multirun and Hydra's own flags: every job is checked by train() itself
    # The search path changes what composes; Hydra's other settings only where and how runs go.
    compose_config([a for a in args
                    if not a.lstrip("+~").startswith("hydra.") or a.lstrip("+").startswith("hydra.searchpath=")])


def cli() -> None:
    try:
        preflight(sys.argv[1:])
    except UserError as err:
        print(f"glimpse.train: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    # Launchers (joblib, submitit) pickle the task function; one defined under __main__ would be pickled by
    # value with module globals that cannot be pickled, so run the importable module's cli instead.
    from glimpse.train import cli as _cli

    _cli()
