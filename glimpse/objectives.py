"""Losses: the paper's hybrid loss for hard attention, plain cross-entropy for everything differentiable."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from glimpse.models.common import Episode


def hybrid_loss(
    episode: Episode, labels: Tensor, reinforce_weight: float = 1.0, baseline_weight: float = 1.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = CE(logits, y) - w_r * mean_b sum_t log pi(l_t) (R - b_t) + w_b * mean (b_t - R)^2.

    Cross-entropy trains the action, core and glimpse networks. REINFORCE, with
    reward R = 1 for a correct final classification and 0 otherwise, trains the
    location network; the advantage R - b_t holds the baseline detached, and the
    baseline network learns by squared error. Models without sampled locations
    (`episode.log_pi is None`) get cross-entropy alone.
    Returns the loss and its terms (detached) for logging.
    """
    ce = F.cross_entropy(episode.logits, labels)
    # float64 models: mse_loss wants one dtype
    reward = (episode.logits.detach().argmax(1) == labels).to(episode.logits.dtype)
    terms = {"loss/ce": ce.detach(), "reward": reward.mean()}
    if episode.log_pi is None:
        return ce, terms
    advantage = reward[:, None] - episode.baselines.detach()
    reinforce = -(episode.log_pi * advantage).sum(1).mean()
    baseline = F.mse_loss(episode.baselines, reward[:, None].expand_as(episode.baselines))
    terms.update({"loss/reinforce": reinforce.detach(), "loss/baseline": baseline.detach(),
                  "baseline": episode.baselines.detach().mean()})
    return ce + reinforce_weight * reinforce + baseline_weight * baseline, terms
