"""`python -m glimpse.train [overrides]`: train one model, write its run folder (DESIGN.md).

The Hydra entry is thin; `train(cfg, run_dir)` does the work and can be called directly.
The loop, top to bottom: per epoch, fresh training canvases and policy noise from
generators keyed by (seed, epoch); Adam steps on the hybrid loss; evaluation on
validation (sampled and greedy policy); `last.pt` every epoch and `best.pt` on a
new best validation error. At the end the best checkpoint is scored once on test.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from glimpse import checkpoint
from glimpse.accounting import macs_per_image, params
from glimpse.config import check_image_fits, check_overrides, compose_config, validate
from glimpse.data import GlimpseData, seeded
from glimpse.errors import UserError
from glimpse.evaluate import evaluate_model
from glimpse.models import build_model
from glimpse.objectives import hybrid_loss


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"invalid config: device={name!r}; CUDA is not available here (use device=auto or cpu)")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, cfg: DictConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam (fused kernels: one call updates every tensor) with a per-epoch cosine or constant schedule."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr, fused=True)
    if cfg.trainer.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.trainer.epochs)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    return opt, sched


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Train `cfg`'s model on `cfg`'s data; write checkpoints, TensorBoard scalars and metrics.json to `run_dir`."""
    validate(cfg)
    run_dir = Path(run_dir) if run_dir is not None else Path.cwd()
    device = resolve_device(cfg.device)
    t, m = cfg.trainer, cfg.model
    torch.manual_seed(cfg.seed)

    data = GlimpseData(cfg.data, cfg.seed, device)
    check_image_fits(cfg, *data.train.images.shape[-2:])
    model = build_model(cfg, data.image_shape, data.classes).to(device)
    optimizer, scheduler = make_optimizer(model, cfg)
    config = OmegaConf.to_container(cfg, resolve=True)

    start_epoch, best_val, best_epoch, train_seconds, images_seen = 0, math.inf, -1, 0.0, 0
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if t.resume:
        state = checkpoint.load(last_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_val, best_epoch = state["epoch"], state["best_val_error"], state["best_epoch"]
        train_seconds, images_seen = state["train_seconds"], state["images_seen"]

    writer = SummaryWriter(log_dir=str(run_dir))
    steps_per_epoch = math.ceil(len(data.train) / t.batch_size)
    bar = tqdm(range(start_epoch, t.epochs), initial=start_epoch, total=t.epochs, desc=f"{m.name} {cfg.data.name}",
               disable=not t.progress, dynamic_ncols=True)
    for epoch in bar:
        # Canvases and policy noise of an epoch depend only on (seed, epoch): resuming replays them exactly.
        gen = seeded(cfg.seed, "train", epoch, device=device)
        model.train()
        sums: dict[str, torch.Tensor] = {}
        n = 0
        tic = time.perf_counter()
        for images, labels in data.train_batches(t.batch_size, gen):
            episode = model(images, generator=gen)
            loss, terms = hybrid_loss(episode, labels, m.get("reinforce_weight", 0.0), m.get("baseline_weight", 0.0))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in terms.items():  # summed on the device: no sync per step
                sums[k] = sums.get(k, 0) + v * len(labels)
            n += len(labels)
        seconds = time.perf_counter() - tic
        train_seconds += seconds
        images_seen += n
        step = (epoch + 1) * steps_per_epoch
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        val = evaluate_model(model, data.eval_batches("val", t.eval_batch_size), t.eval_samples,
                             seeded(cfg.seed, "eval", "val", device=device))
        scalars = {f"train/{k}": v.item() / n for k, v in sums.items()}
        scalars["train/error"] = 100.0 * (1 - scalars["train/reward"])
        scalars.update({"train/lr": lr, "train/images_per_second": n / seconds,
                        "val/error": val["error"], "val/error_greedy": val["error_greedy"]})
        std = getattr(getattr(model, "location_net", None), "std", None)
        if std is not None:
            scalars["train/location_std"] = std
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)

        if val["error"] < best_val:
            best_val, best_epoch = val["error"], epoch + 1
            checkpoint.save({"config": config, "epoch": epoch + 1, "model": model.state_dict(), "val_error": best_val}, best_path)
        checkpoint.save({"config": config, "epoch": epoch + 1, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "best_val_error": best_val, "best_epoch": best_epoch,
                         "train_seconds": train_seconds, "images_seen": images_seen}, last_path)
        bar.set_postfix(ce=f"{scalars['train/loss/ce']:.3f}", train_err=f"{scalars['train/error']:.2f}",
                        val_err=f"{val['error']:.2f}", img_s=f"{n / seconds:,.0f}")
        writer.flush()

    # Test once, with the checkpoint chosen on validation.
    best = checkpoint.load(best_path, map_location=device)
    model.load_state_dict(best["model"])
    test = evaluate_model(model, data.eval_batches("test", t.eval_batch_size), t.eval_samples,
                          seeded(cfg.seed, "eval", "test", device=device), count_pixels=True)
    probe = next(data.eval_batches("test", 8))[0]
    inference = inference_images_per_second(model, data, t.eval_batch_size)
    metrics = {
        "model": m.name, "data": cfg.data.name, "seed": cfg.seed,
        "test_error": test["error"], "test_error_greedy": test["error_greedy"],
        "val_error_best": best_val, "best_epoch": best_epoch, "epochs": t.epochs,
        "train_seconds": train_seconds, "train_images_per_second": images_seen / max(train_seconds, 1e-9),
        "inference_images_per_second": inference,
        "params": params(model), "macs_per_image": macs_per_image(model, probe),
        "pixels_per_image": test["pixels_per_image"],
        "glimpses": m.get("glimpses"), "device": str(device), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
    }
    for k in ("error", "error_greedy"):
        writer.add_scalar(f"test/{k}", test[k], t.epochs * steps_per_epoch)
    writer.close()
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


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


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    @hydra.main(version_base="1.3", config_path="../conf", config_name="config")
    def main(cfg: DictConfig) -> None:
        try:
            metrics = train(cfg, HydraConfig.get().runtime.output_dir)
        except UserError as err:
            print(f"glimpse.train: {err}", file=sys.stderr)
            sys.exit(2)
        print(json.dumps({k: metrics[k] for k in ("model", "data", "seed", "test_error", "test_error_greedy", "val_error_best", "train_seconds")}))

    main()


def preflight(args: list[str]) -> None:
    """Compose and check the config of a single run before Hydra makes its folder: a bad value costs nothing."""
    check_overrides(args)
    if any(a.startswith("-") for a in args):
        return  # multirun and Hydra's own flags: every job is checked by train() itself
    compose_config([a for a in args if not a.lstrip("+~").startswith("hydra.")])


def cli() -> None:
    try:
        preflight(sys.argv[1:])
    except UserError as err:
        print(f"glimpse.train: {err}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()


if __name__ == "__main__":
    cli()
