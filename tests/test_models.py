"""Soft attention, differentiable glimpses and the reference models, on the same footing as RAM."""

import pytest
import torch

from glimpse.config import validate
from glimpse.errors import ConfigError
from glimpse.models import MODELS, build_model
from glimpse.models.soft import grid_locations
from glimpse.objectives import hybrid_loss
from glimpse.train import make_optimizer, train, train_step
from tests.conftest import make_cfg, needs_mnist


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("data, shape", [("mnist", (1, 28, 28)), ("cluttered60", (1, 60, 60))])
def test_every_preset_builds_and_classifies(name, data, shape):
    cfg = make_cfg(f"experiment={name}_{data}")
    model = build_model(cfg, shape, 10)
    episode = model(torch.rand(3, *shape), generator=torch.Generator().manual_seed(0))
    assert episode.logits.shape == (3, 10)
    loss, terms = hybrid_loss(episode, torch.tensor([1, 2, 3]))
    loss.backward()
    assert ("loss/reinforce" in terms) == (name == "ram")  # only RAM has a REINFORCE term


@pytest.mark.parametrize("name", MODELS)
def test_every_model_takes_a_bf16_training_step_with_float32_weights(name):
    """trainer.precision=bf16: the forward under torch.autocast, weights, gradients and Adam in float32."""
    cfg = make_cfg(f"experiment={name}_mnist", "trainer.precision=bf16")
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    optimizer, _ = make_optimizer(model, cfg)
    before = [p.detach().clone() for p in model.parameters()]
    images, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    loss, _, finite = train_step(model, optimizer, images, labels, torch.Generator().manual_seed(0), cfg.model, "bf16")
    assert finite and torch.isfinite(loss)
    for p, _ in zip(model.parameters(), before):
        assert p.dtype == p.grad.dtype == torch.float32
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), before))


def test_soft_attention_weights_sum_to_one_over_the_grid_at_every_step():
    cfg = make_cfg("experiment=soft_mnist")
    model = build_model(cfg, (1, 28, 28), 10)
    episode = model(torch.rand(4, 1, 28, 28))
    cells = grid_locations(28, 28, 8, 4)
    assert episode.attention.shape == (4, 6, 4, len(cells))  # (B, T, heads, N)
    torch.testing.assert_close(episode.attention.sum(-1), torch.ones(4, 6, 4))
    assert (episode.attention >= 0).all()


def test_grid_covers_the_image_from_corner_to_corner():
    cells = grid_locations(28, 28, 8, 4)
    assert len(cells) == 36  # 6 x 6 cells, centres at pixels 4, 8, ..., 24
    assert cells.min() == pytest.approx(-1 + 4 / 14) and cells.max() == pytest.approx(1 - 4 / 14)
    assert len(grid_locations(30, 30, 8, 4)) == 49  # the last cell still reaches the far edge


def location_grad(name: str, **loss_weights) -> float:
    cfg = make_cfg(f"experiment={name}_mnist")
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    g = torch.Generator().manual_seed(0)
    episode = model(torch.rand(16, 1, 28, 28, generator=g), generator=g)
    loss, _ = hybrid_loss(episode, torch.randint(0, 10, (16,), generator=g), **loss_weights)
    loss.backward()
    return sum(float(p.grad.abs().sum()) for p in model.location_net.parameters() if p.grad is not None)


def test_dram_location_learns_from_the_classification_loss_ram_location_only_from_reinforce():
    assert location_grad("dram") > 0  # cross-entropy alone: the gradient flows through bilinear sampling
    assert location_grad("ram", reinforce_weight=0.0, baseline_weight=1.0) == 0
    assert location_grad("ram", reinforce_weight=1.0, baseline_weight=0.0) > 0


@pytest.mark.parametrize("to_core", [False, True])
def test_dram_location_gradient_goes_into_the_core_only_when_asked(to_core):
    """By default DRAM's location network reads the core state detached (as RAM's does): a loss on where
    it looked teaches the location network only. model.location_grad_to_core=true lets it go on into the core."""
    cfg = make_cfg("experiment=dram_translated60", f"model.location_grad_to_core={str(to_core).lower()}")
    model = build_model(cfg, (1, 60, 60), 10)
    episode = model(torch.rand(4, 1, 60, 60), generator=torch.Generator().manual_seed(0))
    episode.locations[:, 1:].sum().backward()
    assert model.location_net.weight.grad.abs().sum() > 0
    reached = lambda net: any(p.grad is not None and p.grad.any() for p in net.parameters())  # noqa: E731
    assert reached(model.core) == to_core
    assert reached(model.glimpse_net) == to_core  # through the core: g_t feeds h_t


def test_dram_location_grad_to_core_must_be_a_bool():
    with pytest.raises(ConfigError, match=r"model.location_grad_to_core='maybe'; allowed: true or false"):
        validate(make_cfg("model=dram", "model.location_grad_to_core=maybe"))


@needs_mnist
@pytest.mark.parametrize(
    "name, extra, bound",
    [
        ("soft", ("model.stride=8", "data.train_limit=30000", "trainer.epochs=1"), 45.0),  # slow starter: 400 steps
        ("dram", ("trainer.epochs=2", "trainer.lr=0.003"), 20.0),
        ("fc", ("trainer.epochs=1",), 10.0),
        ("cnn", ("data.train_limit=20000", "trainer.epochs=1", "trainer.lr=0.003"), 10.0),
    ],
)
def test_each_model_learns_on_real_mnist_and_accounts_for_its_cost(name, extra, bound, tmp_path):
    metrics = train(make_cfg(f"experiment={name}_mnist", "data.eval_limit=1000", "trainer.eval_samples=1", *extra),
                    tmp_path)
    assert metrics["test_error"] < bound  # chance: 90%
    assert metrics["test_error_greedy"] == metrics["test_error"]  # deterministic models: one policy
    assert metrics["params"] > 0 and metrics["macs_per_image"] > 0
    whole = name in ("fc", "cnn", "soft")  # soft's grid of patches covers every pixel
    assert (metrics["pixels_per_image"] == 784) == whole and 0 < metrics["pixels_per_image"] <= 784
