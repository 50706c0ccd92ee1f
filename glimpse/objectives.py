"""Losses: the paper's hybrid loss for hard attention, plain cross-entropy for everything differentiable.

Several episodes per image (`model.episodes_per_image`, K): the training step repeats each image and its label
K times, consecutively (`repeat_episodes`), so that the loss sees a batch of K x B episodes in which rows
i*K .. i*K + K-1 are image i's; `hybrid_loss(..., baseline="episodes")` relies on that layout.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from glimpse.models.common import Episode

BASELINES = ("learned", "episodes")


def repeat_episodes(images: Tensor, labels: Tensor, episodes_per_image: int) -> tuple[Tensor, Tensor]:
    """Each image and label `episodes_per_image` (K) times in a row: (B, ...) -> (K * B, ...), image i's K copies
    at rows i*K .. i*K + K-1. K = 1 returns the batch itself."""
    if episodes_per_image == 1:
        return images, labels
    return images.repeat_interleave(episodes_per_image, 0), labels.repeat_interleave(episodes_per_image, 0)


def leave_one_out_mean(reward: Tensor, episodes_per_image: int) -> Tensor:
    """For each episode, the mean reward of the other K-1 episodes of its image (`repeat_episodes`' layout).

    An episode's own reward is left out so that its baseline does not depend on its own action, which keeps
    REINFORCE's gradient estimate unbiased."""
    k = episodes_per_image
    if k < 2:
        raise ValueError(f"a leave-one-out baseline needs episodes_per_image >= 2, got {k}")
    per_image = reward.view(-1, k)
    return ((per_image.sum(1, keepdim=True) - per_image) / (k - 1)).view(-1)


def hybrid_loss(
    episode: Episode, labels: Tensor, reinforce_weight: float = 1.0, baseline_weight: float = 1.0,
    baseline: str = "learned", episodes_per_image: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = CE(logits, y) - w_r * mean_b sum_t log pi(l_t) (R - b_t) + w_b * mean (b_t - R)^2.

    Cross-entropy trains the action, core and glimpse networks. REINFORCE, with
    reward R = 1 for a correct final classification and 0 otherwise, trains the
    location network; the advantage R - b_t holds the baseline detached, and the
    baseline network learns by squared error. Models without sampled locations
    (`episode.log_pi is None`) get cross-entropy alone.
    `baseline` (`model.baseline`) says what the advantage subtracts: `learned`, the baseline network's b_t;
    `episodes`, the mean reward of the image's other K-1 episodes (`leave_one_out_mean`; K =
    `episodes_per_image` >= 2, the batch in `repeat_episodes`' layout). The baseline network learns its squared
    error either way (w_b = 0 leaves it untrained).
    Returns the loss and its terms (detached) for logging.
    """
    ce = F.cross_entropy(episode.logits, labels)
    # float64 models: mse_loss wants one dtype
    reward = (episode.logits.detach().argmax(1) == labels).to(episode.logits.dtype)
    terms = {"loss/ce": ce.detach(), "reward": reward.mean()}
    if episode.log_pi is None:
        return ce, terms
    if baseline == "episodes":
        # in the log-probabilities' dtype: under bf16 autocast the rewards are bfloat16, and 1/(K-1) would round
        r = reward.to(episode.log_pi.dtype)
        advantage = (r - leave_one_out_mean(r, episodes_per_image))[:, None]
    elif baseline == "learned":
        advantage = reward[:, None] - episode.baselines.detach()
    else:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    reinforce = -(episode.log_pi * advantage).sum(1).mean()
    baseline_error = F.mse_loss(episode.baselines, reward[:, None].expand_as(episode.baselines))
    terms.update({"loss/reinforce": reinforce.detach(), "loss/baseline": baseline_error.detach(),
                  "baseline": episode.baselines.detach().mean()})
    return ce + reinforce_weight * reinforce + baseline_weight * baseline_error, terms
