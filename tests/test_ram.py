"""RAM's pieces: what each network sees, where each gradient goes, and the hybrid loss."""

import pytest
import torch

from glimpse.models import build_model
from glimpse.models.ram import RAM
from glimpse.objectives import hybrid_loss, repeat_episodes
from tests.conftest import make_cfg


def small_ram(**kw):
    torch.manual_seed(0)
    return RAM((1, 28, 28), 10, glimpses=4, patch=8, **kw)


def test_episode_shapes_and_locations_in_range():
    model = small_ram()
    ep = model(torch.rand(5, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert ep.logits.shape == (5, 10) and ep.locations.shape == (5, 4, 2)
    # one log-probability and one baseline per location that was actually used for a glimpse
    assert ep.log_pi.shape == (5, 3) and ep.baselines.shape == (5, 3) and ep.means.shape == (5, 3, 2)
    assert ep.locations.abs().max() <= 1


def test_greedy_policy_follows_the_means_and_starts_at_the_centre():
    model = small_ram().eval()
    ep = model(torch.rand(3, 1, 28, 28), greedy=True)
    assert torch.equal(ep.locations[:, 0], torch.zeros(3, 2))
    torch.testing.assert_close(ep.locations[:, 1:], ep.means.clamp(-1, 1))


@pytest.mark.parametrize("core", ["rnn", "lstm", "gru"])
def test_every_core_runs_from_the_config(core):
    cfg = make_cfg(f"model.core={core}", "model.glimpses=3")
    model = build_model(cfg, (1, 28, 28), 10)
    assert model(torch.rand(2, 1, 28, 28)).logits.shape == (2, 10)


def grads(model, **weights):
    model.zero_grad()
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
    ep = model(images, generator=g)
    loss, _ = hybrid_loss(ep, labels, **weights)
    loss.backward()
    norm = lambda m: sum(float(p.grad.abs().sum()) for p in m.parameters() if p.grad is not None)  # noqa: E731
    names = ("glimpse_net", "core", "location_net", "baseline_net", "action_net")
    return {name: norm(getattr(model, name)) for name in names}


def test_location_network_learns_from_reinforce_only_and_baseline_from_its_error_only():
    model = small_ram()
    ce_only = grads(model, reinforce_weight=0.0, baseline_weight=0.0)
    assert ce_only["location_net"] == 0 and ce_only["baseline_net"] == 0
    assert ce_only["glimpse_net"] > 0 and ce_only["core"] > 0 and ce_only["action_net"] > 0
    reinforce_only = grads(model, reinforce_weight=1.0, baseline_weight=0.0)
    assert reinforce_only["location_net"] > 0 and reinforce_only["baseline_net"] == 0
    # REINFORCE does not reach the core: its state is detached before the location network
    assert reinforce_only["core"] == pytest.approx(ce_only["core"])
    baseline_only = grads(model, reinforce_weight=0.0, baseline_weight=1.0)
    assert baseline_only["baseline_net"] > 0 and baseline_only["location_net"] == 0
    assert baseline_only["core"] == pytest.approx(ce_only["core"])


@pytest.mark.parametrize("correct, direction", [(True, 1), (False, -1)])
def test_reinforce_moves_the_mean_towards_rewarded_samples_and_away_from_the_others(correct, direction):
    """A gradient step on the REINFORCE term raises log pi of a sample whose advantage R - b is positive."""
    from glimpse.models.common import Episode
    from glimpse.models.ram import LocationNetwork

    policy = LocationNetwork(hidden=4, std=0.2)
    mu = torch.zeros(8, 1, 2, requires_grad=True)
    samples = torch.full((8, 1, 2), 0.3)
    labels = torch.zeros(8, dtype=torch.long)
    logits = torch.zeros(8, 10)
    logits[:, 0 if correct else 1] = 5.0  # reward 1 or 0 for every image
    baselines = torch.full((8, 1), 0.5)  # advantage +0.5 or -0.5
    ep = Episode(logits, None, policy.log_prob(samples, mu), baselines, mu)
    loss, terms = hybrid_loss(ep, labels, reinforce_weight=1.0, baseline_weight=0.0)
    assert terms["reward"] == float(correct)
    loss.backward()
    step = -mu.grad  # gradient descent direction
    assert (torch.sign(step) == direction).all()


@pytest.mark.parametrize("shape, retina, episodes_per_image, baseline", [
    ((1, 28, 28), dict(glimpses=6, patch=8), 1, "learned"),  # the ram_mnist preset
    ((1, 60, 60), dict(glimpses=8, patch=12, scales=3, resize="bilinear"), 1, "learned"),  # the cluttered presets
    ((3, 32, 32), dict(glimpses=2, patch=8), 1, "learned"),
    ((1, 28, 28), dict(glimpses=1, patch=8), 1, "learned"),
    ((1, 28, 28), dict(glimpses=6, patch=8), 4, "episodes"),  # model.episodes_per_image=4 model.baseline=episodes
])
def test_hand_written_bptt_equals_autograd_through_the_plain_loop(shape, retina, episodes_per_image, baseline):
    """fused=True (RNNEpisode, the fast path for core=rnn) gives fused=False's episode and gradients (the plain
    loop, autograd throughout), in float64; K episodes per image are K rows of the batch to both."""
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        fused = RAM(shape, 10, **retina, fused=True)
        plain = RAM(shape, 10, **retina, fused=False)
        plain.load_state_dict(fused.state_dict())
        g = torch.Generator().manual_seed(1)
        images, labels = torch.rand(16, *shape, generator=g), torch.randint(0, 10, (16,), generator=g)
        images, labels = repeat_episodes(images, labels, episodes_per_image)
        episodes = []
        for model in (fused, plain):
            ep = model(images, generator=torch.Generator().manual_seed(2))
            hybrid_loss(ep, labels, baseline=baseline, episodes_per_image=episodes_per_image)[0].backward()
            episodes.append(ep)
        # equal up to rounding: the two sum the same products in another order
        torch.testing.assert_close(episodes[0].locations, episodes[1].locations, rtol=1e-12, atol=1e-12)
        # the pictures re-read each episode's glimpses through the sensor, all steps at once
        torch.testing.assert_close(fused.sensor(images, episodes[0].locations),
                                   plain.sensor(images, episodes[1].locations))
        torch.testing.assert_close(episodes[0].logits, episodes[1].logits)
        if retina["glimpses"] > 1:
            torch.testing.assert_close(episodes[0].log_pi, episodes[1].log_pi)
            torch.testing.assert_close(episodes[0].baselines, episodes[1].baselines)
        for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
            assert (a.grad is None) == (b.grad is None), name
            if b.grad is not None:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12, msg=name)
        assert fused.glimpse_net.what.weight.grad.abs().sum() > 0 and fused.core.cell.weight.grad.abs().sum() > 0
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("overrides, fused, runs_fused", [
    ([], True, True),  # the default: core=rnn takes the fast path
    (["model.fused=false"], False, False),
    (["model.core=gru"], True, False),  # only core=rnn has a fast path
])
def test_model_fused_chooses_between_the_fast_path_and_the_plain_loop(overrides, fused, runs_fused, monkeypatch):
    import glimpse.models.ram as ram
    from glimpse.config import compose_config

    model = build_model(compose_config(["model.glimpses=3", *overrides]), (1, 28, 28), 10)
    assert model.fused is fused
    calls, real = [], ram.fused_episode

    def spy(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(ram, "fused_episode", spy)
    assert model(torch.rand(2, 1, 28, 28)).logits.shape == (2, 10)
    assert calls == ([1] if runs_fused else [])


def test_model_fused_must_be_a_boolean():
    from glimpse.config import compose_config
    from glimpse.errors import ConfigError

    with pytest.raises(ConfigError, match="model.fused"):
        compose_config(["model.fused=often"])


def test_bf16_precision_keeps_the_episode_and_the_gradients_near_float32s():
    """trainer.precision=bf16 (torch.autocast): RNNEpisode's large products run in bfloat16 (8 bits of
    mantissa); the locations it samples, the means and baselines, and every gradient stay float32, and
    near what float32 products give."""
    torch.manual_seed(0)
    model = RAM((1, 28, 28), 10, glimpses=6, patch=8)
    g = torch.Generator().manual_seed(1)
    images, labels = torch.rand(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    episodes, gradients = [], []
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            ep = model(images, generator=torch.Generator().manual_seed(2))
            loss = hybrid_loss(ep, labels)[0]
        loss.backward()
        episodes.append(ep)
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    fp32, bf16 = episodes
    assert bf16.locations.dtype == bf16.means.dtype == bf16.baselines.dtype == torch.float32
    assert bf16.logits.dtype == torch.bfloat16  # the action network is autocast's
    assert not torch.equal(fp32.means, bf16.means)  # the core did run in bfloat16
    assert (fp32.locations - bf16.locations).abs().max() < 0.02  # a fraction of a pixel (1 = 14 pixels)
    torch.testing.assert_close(bf16.baselines, fp32.baselines, atol=0.05, rtol=0)
    for name, exact in gradients[0].items():
        rounded = gradients[1][name]
        assert rounded.dtype == torch.float32, name
        # 1-12% apart here: rounding, and the odd reward flipped by a bfloat16 logit of an untrained model
        assert (rounded - exact).norm() <= 0.2 * exact.norm(), name
