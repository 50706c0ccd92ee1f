"""On a CUDA device the code computes what it computes on the CPU (every test here is skipped without one).

With `device=auto` (the default) the rest of the suite also trains on CUDA when a GPU is present;
these tests compare the two devices directly.
"""

import pytest
import torch

from glimpse import checkpoint
from glimpse.evaluate import evaluate_model, load_run
from glimpse.models.ram import RAM
from glimpse.objectives import hybrid_loss
from glimpse.sensor import retina
from glimpse.train import train
from tests.conftest import make_cfg, needs_mnist

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32_products():
    """TF32 would round the products to 10 bits of mantissa; these comparisons are about the code, not the format."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("resize", ["area", "bilinear"])
@pytest.mark.parametrize("scales", [1, 3])
def test_the_sensor_reads_the_same_patches_on_cuda(resize, scales):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(32, 1, 60, 60, generator=g)
    locations = torch.rand(32, 2, generator=g) * 2.4 - 1.2  # past the borders too
    locations[:4] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])
    cpu = retina(images, locations, 12, scales, 2.0, resize)
    gpu = retina(images.to(CUDA), locations.to(CUDA), 12, scales, 2.0, resize)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("core", ["rnn", "lstm"])
def test_a_ram_episode_gives_the_same_loss_and_gradients_on_cuda(core):
    """The same weights, images, start and policy noise: the fused rnn episode and the autograd loop alike."""
    torch.manual_seed(0)
    cpu_model = RAM((1, 28, 28), 10, glimpses=6, patch=8, core=core)
    gpu_model = RAM((1, 28, 28), 10, glimpses=6, patch=8, core=core).to(CUDA)
    gpu_model.load_state_dict(cpu_model.state_dict())
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    start, noise = torch.rand(64, 2, generator=g) * 2 - 1, 0.15 * torch.randn(64, 5, 2, generator=g)

    def loss_and_grads(model, device):
        model.zero_grad()
        episode = model.episode(images.to(device), start.to(device), noise.to(device))
        loss, _ = hybrid_loss(episode, labels.to(device))
        loss.backward()
        return loss.cpu(), episode.locations.cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}

    loss, locations, grads = loss_and_grads(cpu_model, "cpu")
    gpu_loss, gpu_locations, gpu_grads = loss_and_grads(gpu_model, CUDA)
    torch.testing.assert_close(gpu_loss, loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gpu_locations, locations, atol=1e-5, rtol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(gpu_grads[name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@needs_mnist
def test_a_run_trained_on_cuda_scores_the_same_when_its_checkpoint_is_reloaded_on_the_cpu(tmp_path):
    metrics = train(make_cfg("device=cuda", "trainer.epochs=2", "trainer.lr=0.003", "data.eval_limit=1000",
                             "trainer.eval_samples=2"), tmp_path)
    assert metrics["device"].startswith("cuda") and metrics["test_error"] < 30  # 15.5% on the CPU
    # the greedy policy from the centre is deterministic: the same errors up to float rounding
    model, _, data = load_run(tmp_path, "best", device="cpu")
    cpu = evaluate_model(model, data.eval_batches("test", 1000), 1, torch.Generator().manual_seed(0))
    assert abs(cpu["error_greedy"] - metrics["test_error_greedy"]) <= 0.2


# 3,000 training images in batches of 128: 23 full batches (3 warm-up steps, a capture, replays) and a short last
# one (eager)
GRAPHED = ("device=cuda", "data.train_limit=3000", "data.eval_limit=500", "trainer.epochs=2", "trainer.eval_samples=2",
           "trainer.visual_every=0")


@needs_mnist
def test_a_run_replaying_its_steps_as_a_cuda_graph_computes_exactly_what_the_eager_run_does(tmp_path, monkeypatch):
    import glimpse.train

    replays = []
    real_call = glimpse.train.GraphedStep.__call__

    def counted(self, *args):
        replays.append(self.graph is not None)
        return real_call(self, *args)

    monkeypatch.setattr(glimpse.train.GraphedStep, "__call__", counted)
    graphed = train(make_cfg(*GRAPHED), tmp_path / "graph")
    # all but the warm-up steps and the capture: replays, or eager if short
    assert len(replays) == 2 * 24 and sum(replays) == 2 * 24 - 4
    eager = train(make_cfg(*GRAPHED, "trainer.cuda_graph=false"), tmp_path / "eager")
    assert len(replays) == 2 * 24  # the eager run did not go through GraphedStep
    for key in ("test_error", "test_error_greedy", "val_error_best", "best_epoch"):
        assert graphed[key] == eager[key], key
    a, b = (checkpoint.load(p / "checkpoints" / "last.pt")["model"] for p in (tmp_path / "graph", tmp_path / "eager"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@needs_mnist
@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nonfinite_batch_under_the_cuda_graph_is_skipped_on_the_device_or_stops_the_run(policy, tmp_path,
                                                                                          monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from glimpse.data import GlimpseData
    from glimpse.train import NonFiniteError

    real_batches = GlimpseData.train_batches

    def poisoned(self, *args, **kwargs):  # batch 8 of the first epoch carries a NaN image: a replayed step
        for i, (images, labels) in enumerate(real_batches(self, *args, **kwargs), start=1):
            if i == 8 and not poisoned.done:
                images = images.clone()
                images[0] = torch.nan  # all of it: every glimpse reads some of it
                poisoned.done = True
            yield images, labels

    poisoned.done = False
    monkeypatch.setattr(GlimpseData, "train_batches", poisoned)
    if policy == "stop":
        with pytest.raises(NonFiniteError, match="epoch 1, batch 8"):
            train(make_cfg(*GRAPHED, "trainer.checkpoint_every_minutes=0"), tmp_path)
        return
    metrics = train(make_cfg(*GRAPHED, "trainer.on_nonfinite=skip"), tmp_path)
    assert metrics["test_error"] < 90
    skipped = [e.value for e in EventAccumulator(str(tmp_path)).Reload().Scalars("train/skipped_batches")]
    assert skipped == [1, 0]
    assert all(torch.isfinite(v).all() for v in checkpoint.load(tmp_path / "checkpoints" / "last.pt")["model"].values())
