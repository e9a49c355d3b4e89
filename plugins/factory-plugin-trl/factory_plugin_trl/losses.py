"""The preference and reward losses, as TRL 1.x defines them, over per-sequence log-probabilities.

Written out (a few lines each) because TRL computes them inside its trainers' forward passes,
which would re-run the model the slow way (padded pairs, a reference forward every step). Each
formula follows TRL's trainer of the same name; ``tests/test_losses.py`` checks every one against
TRL's own trainers and loss methods on fixed batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def dpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    loss: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-pair DPO loss from summed log-probabilities (TRL's ``DPOTrainer``, reverse-KL).

    ``sigmoid`` with ``label_smoothing`` is conservative DPO (cDPO): the preference is taken as
    flipped with that probability. ``ipo`` normalises by the answers' token counts, as TRL does.
    """
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss == "sigmoid":
        return -F.logsigmoid(beta * delta) * (1 - label_smoothing) - F.logsigmoid(-beta * delta) * label_smoothing
    if loss == "hinge":
        return torch.relu(1 - beta * delta)
    if loss == "ipo":
        assert chosen_tokens is not None and rejected_tokens is not None
        ipo_delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        return (ipo_delta - 1 / (2 * beta)) ** 2
    raise ValueError(f"unknown DPO loss {loss!r}")


def kto_kl(policy_kl: torch.Tensor, reference_kl: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the mean KL estimate over mismatched pairs, never negative, no gradient."""
    return (policy_kl - reference_kl).mean().detach().clamp(min=0)


def kto_losses(
    chosen_ratio: torch.Tensor,
    rejected_ratio: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Per-answer KTO loss (desirable answers first): Eq. 7 of the KTO paper, as TRL's ``KTOTrainer``."""
    return torch.cat(
        (
            desirable_weight * (1 - torch.sigmoid(beta * (chosen_ratio - kl))),
            undesirable_weight * (1 - torch.sigmoid(beta * (kl - rejected_ratio))),
        )
    )


def simpo_losses(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, *, beta: float, gamma: float) -> torch.Tensor:
    """Per-pair SimPO loss from length-averaged log-probabilities (TRL's ``CPOTrainer``, ``loss_type=simpo``)."""
    logits = (chosen_mean - rejected_mean) - gamma / beta
    return -F.logsigmoid(beta * logits)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_log_odds(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor) -> torch.Tensor:
    """Log odds ratio of chosen over rejected, from length-averaged log-probabilities (ORPO, Eqs. 4 and 7)."""
    chosen_mean, rejected_mean = chosen_mean.float(), rejected_mean.float()
    return (chosen_mean - rejected_mean) - (log1mexp(chosen_mean) - log1mexp(rejected_mean))


def reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, center: float | None = None) -> torch.Tensor:
    """Bradley-Terry loss of a reward model (TRL's ``RewardTrainer``), plus its optional centring term."""
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center is not None:
        loss = loss + center * torch.mean((chosen + rejected) ** 2)
    return loss
