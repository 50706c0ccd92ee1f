"""The hybrid loss and the training options around it: several episodes per image, the episodes' baseline,
gradient clipping. At their defaults they leave the loss, the gradients and Adam's step exactly as they were."""

import pytest
import torch
import torch.nn.functional as F

from glimpse.config import compose_config
from glimpse.errors import ConfigError
from glimpse.models import build_model
from glimpse.models.common import Episode
from glimpse.objectives import hybrid_loss, leave_one_out_mean, repeat_episodes
from glimpse.train import location_std, make_optimizer, train, train_step
from tests.conftest import make_cfg, needs_mnist


def paper_loss(episode: Episode, labels: torch.Tensor) -> torch.Tensor:
    """The hybrid loss written out as it was before the options: REINFORCE against the learned baseline."""
    ce = F.cross_entropy(episode.logits, labels)
    reward = (episode.logits.detach().argmax(1) == labels).float()
    reinforce = -(episode.log_pi * (reward[:, None] - episode.baselines.detach())).sum(1).mean()
    return ce + reinforce + F.mse_loss(episode.baselines, reward[:, None].expand_as(episode.baselines))


def batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images and labels, as the data layer serves them."""
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return images, torch.randint(0, 10, (n,), generator=g)


def one_step(overrides: list[str], step=None) -> dict[str, torch.Tensor]:
    """RAM's weights after one Adam step on `batch()`: `train_step`, or `step(model, images, labels, generator)`."""
    cfg = make_cfg(*overrides)
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    optimizer, _ = make_optimizer(model, cfg)
    images, labels = batch()
    generator = torch.Generator().manual_seed(2)
    if step is None:
        clip = cfg.trainer.clip_grad_norm
        assert train_step(model, optimizer, images, labels, generator, cfg.model, clip_grad_norm=clip)[2]
    else:
        optimizer.zero_grad()
        step(model, images, labels, generator).backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_at_their_defaults_the_options_give_exactly_the_papers_loss_and_gradients():
    torch.manual_seed(0)
    model = build_model(make_cfg(), (1, 28, 28), 10)
    images, labels = batch()
    episode = model(images, generator=torch.Generator().manual_seed(2))
    grads = []
    for loss in (hybrid_loss(episode, labels)[0], paper_loss(episode, labels)):
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.equal(hybrid_loss(episode, labels)[0], paper_loss(episode, labels))
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_at_their_defaults_the_options_take_exactly_the_step_taken_before_them():
    spelled_out = ["model.episodes_per_image=1", "model.baseline=learned", "trainer.clip_grad_norm=null",
                   "model.std_final=null", "model.greedy_fraction=0"]
    by_hand = one_step([], lambda model, images, labels, g: paper_loss(model(images, generator=g), labels))
    for weights in (one_step([]), one_step(spelled_out)):
        assert all(torch.equal(weights[k], by_hand[k]) for k in by_hand)


def test_k_episodes_per_image_are_one_batch_of_each_image_repeated_k_times():
    images, labels = batch(4)
    many, their_labels = repeat_episodes(images, labels, 3)
    assert many.shape == (12, 1, 28, 28)
    assert torch.equal(many[3:6], images[1].expand(3, 1, 28, 28)) and their_labels.tolist()[3:6] == [labels[1]] * 3
    # the training step runs exactly that batch: one episode per row, each with its own start and noise
    by_hand = one_step([], lambda model, images, labels, g: paper_loss(
        model(images.repeat_interleave(3, 0), generator=g), labels.repeat_interleave(3)))
    stepped = one_step(["model.episodes_per_image=3"])
    assert all(torch.equal(stepped[k], by_hand[k]) for k in by_hand)


def test_the_loss_of_k_episodes_per_image_is_the_mean_of_k_batches_of_one_episode_each():
    torch.manual_seed(0)
    model = build_model(make_cfg(), (1, 28, 28), 10)
    images, labels = repeat_episodes(*batch(8), 3)
    ep = model(images, generator=torch.Generator().manual_seed(2))
    loss, terms = hybrid_loss(ep, labels, episodes_per_image=3)
    # slice j holds the j-th episode of every image
    slices = [hybrid_loss(Episode(ep.logits[j::3], ep.locations[j::3], ep.log_pi[j::3], ep.baselines[j::3]),
                          labels[j::3]) for j in range(3)]
    torch.testing.assert_close(loss, torch.stack([s[0] for s in slices]).mean())
    torch.testing.assert_close(terms["loss/ce"], F.cross_entropy(ep.logits, labels))  # over all 24 episodes


def test_the_episodes_baseline_is_the_mean_reward_of_the_images_other_episodes():
    # two images, three episodes each
    reward = torch.tensor([1.0, 0.0, 1.0,
                           0.0, 0.0, 1.0])
    assert leave_one_out_mean(reward, 3).tolist() == [0.5, 1.0, 0.5,
                                                      0.5, 0.5, 0.0]
    # through the loss: REINFORCE pushes each log pi by its advantage R - (the others' mean), whatever b_t says
    labels = torch.zeros(6, dtype=torch.long)
    logits = torch.zeros(6, 10)
    logits[:, 0], logits[:, 1] = reward, 1 - reward  # class 0 (correct) where the reward is 1
    advantage = torch.tensor([0.5, -1.0, 0.5, -0.5, -0.5, 1.0])
    for baselines in (torch.zeros(6, 2), torch.rand(6, 2)):
        log_pi = torch.zeros(6, 2, requires_grad=True)  # two sampled locations per episode
        hybrid_loss(Episode(logits, None, log_pi, baselines), labels, baseline="episodes",
                    episodes_per_image=3)[0].backward()
        torch.testing.assert_close(log_pi.grad, -advantage[:, None].expand(6, 2) / 6)


def test_clip_grad_norm_bounds_the_gradients_total_norm_and_logs_the_norm_before():
    cfg = make_cfg()
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    optimizer, _ = make_optimizer(model, cfg)
    images, labels = batch()
    _, terms, finite = train_step(model, optimizer, images, labels, torch.Generator().manual_seed(2), cfg.model,
                                  clip_grad_norm=0.01)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert finite and terms["grad_norm"] > 0.01 and total <= 0.01 * (1 + 1e-5)


def test_a_nonfinite_gradient_still_skips_the_step_when_clipping():
    cfg = make_cfg()
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    optimizer, _ = make_optimizer(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.core.cell.weight.register_hook(lambda grad: grad.index_fill(0, torch.tensor([3]), torch.inf))
    _, _, finite = train_step(model, optimizer, *batch(), torch.Generator().manual_seed(2), cfg.model,
                              clip_grad_norm=1.0)
    assert not finite and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_weight_decay_shrinks_the_weight_matrices_and_leaves_the_biases():
    cfg = make_cfg("trainer.weight_decay=0.5", "trainer.lr=0.1")
    model = build_model(cfg, (1, 28, 28), 10)
    optimizer, _ = make_optimizer(model, cfg)
    before = {k: v.clone() for k, v in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's own step is 0: what changes is the decay alone
    optimizer.step()
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if p.dim() >= 2 else before[name]
        torch.testing.assert_close(p.detach(), expected)


@pytest.mark.parametrize("override, allowed", [
    ("model.episodes_per_image=0", "a positive integer"),
    ("trainer.weight_decay=-0.1", "a number >= 0"),
    ("trainer.val_every=0", "a positive integer"),
    ("model.baseline=mean", "learned, episodes"),
    ("model.baseline=episodes", "episodes needs model.episodes_per_image >= 2, not 1"),
    ("trainer.clip_grad_norm=-1", "a number > 0"),
    ("trainer.clip_grad_norm=often", "a number > 0"),
    ("model.std_final=0", "null or a number > 0"),
    ("model.greedy_fraction=1", "a number in [0, 1)"),
])
def test_invalid_training_options_are_refused_in_one_line(override, allowed):
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    message = str(err.value)
    assert message.startswith(f"invalid config: {override.split('=')[0]}=") and allowed in message
    assert "\n" not in message


@needs_mnist
def test_a_short_run_with_four_episodes_per_image_the_episodes_baseline_and_clipping_learns(tmp_path):
    import json

    metrics = train(make_cfg("model.episodes_per_image=4", "model.baseline=episodes", "trainer.clip_grad_norm=1.0",
                             "data.train_limit=512", "data.eval_limit=500", "trainer.batch_size=32",
                             "trainer.epochs=4", "trainer.lr=0.003", "trainer.eval_samples=1",
                             "trainer.visual_every=0", "device=cpu"), tmp_path)
    assert metrics["test_error"] < 85  # chance is 90%; 461 training images, 60 steps
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert all(record["train/grad_norm"] > 0 for record in history)


def test_the_std_schedule_falls_from_std_at_the_first_epoch_to_std_final_at_the_last():
    m = make_cfg("model.std=0.2", "model.std_final=0.05").model
    stds = [location_std(m, 5, epoch) for epoch in range(5)]
    assert stds[0] == pytest.approx(0.2) and stds[-1] == pytest.approx(0.05)
    assert all(a > b for a, b in zip(stds, stds[1:]))
    assert location_std(make_cfg("model.std=0.2").model, 5, 3) == 0.2  # std_final null: constant


def test_the_policy_std_is_part_of_the_weights_and_old_checkpoints_load_at_the_configs_std():
    model = build_model(make_cfg("model.std=0.2"), (1, 28, 28), 10)
    model.location_net.std.fill_(0.07)
    weights = model.state_dict()
    fresh = build_model(make_cfg("model.std=0.2"), (1, 28, 28), 10)
    fresh.load_state_dict(weights)
    assert fresh.location_net.std.item() == pytest.approx(0.07)
    del weights["location_net.std"]  # as checkpoints were written before the schedule
    fresh.load_state_dict(weights)
    assert fresh.location_net.std.item() == pytest.approx(0.2)


@needs_mnist
def test_a_run_with_the_std_schedule_trains_and_reports_each_epochs_std(tmp_path):
    import json

    train(make_cfg("model.std=0.2", "model.std_final=0.05", "data.train_limit=256", "data.eval_limit=200",
                   "trainer.epochs=3", "trainer.eval_samples=1", "trainer.visual_every=0", "device=cpu"), tmp_path)
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [round(r["train/location_std"], 3) for r in history] == [0.2, 0.125, 0.05]
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    best_epoch = min(history, key=lambda r: r["val/error"])
    assert best["model"]["location_net.std"].item() == pytest.approx(best_epoch["train/location_std"])


def test_a_greedy_fraction_of_training_episodes_follows_the_policys_means():
    model = build_model(make_cfg("model.greedy_fraction=0.25"), (1, 28, 28), 10)
    _, noise = model.draws(8, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert noise[:2].eq(0).all() and noise[2:].ne(0).all()  # 2 of 8 episodes at the means
    episode = model(batch(8)[0], generator=torch.Generator().manual_seed(0))
    assert torch.equal(episode.locations[:2, 1:], episode.means[:2].clamp(-1, 1))
    model.eval()  # evaluation's sampled runs all sample
    _, noise = model.draws(8, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert noise.ne(0).all()
