"""The trainer of the preference and reward stages: factory's Trainer with a stage's loss over whole sequences.

Each step runs the policy once over the batch (pairs packed one per row, see
:class:`~factory_plugin_trl.collators.PairCollator`), takes each sequence's log-probability with
the chunked LM head, and hands them to the stage's :class:`Objective`, whose loss is TRL's
(:mod:`factory_plugin_trl.losses`). Reference log-probabilities arrive with the rows
(:mod:`factory_plugin_trl.reference`). Metrics carry TRL's names (``rewards/chosen``...), are
averaged over the steps between two logs, and the run's final metrics add the epoch's mean reward
accuracy (``train_rewards/accuracies``, or ``train_accuracy`` for rm) and, for dpo and kto, the
seconds the reference pass took (``reference_seconds``).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch

from factory.plugin_api import FactoryTrainer, KeyCache
from factory_plugin_trl.losses import (
    dpo_losses,
    kto_kl,
    kto_losses,
    orpo_log_odds,
    reward_loss,
    simpo_losses,
)
from factory_plugin_trl.sequences import SequenceLogps, continuation_cache, count_sequences, sequence_logps

Metrics = dict[str, float]


def _pair_metrics(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, logps: SequenceLogps, half: int, *, means: bool
) -> Metrics:
    values = logps.means if means else logps.sums
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": values[:half].detach().mean().item(),
        "logps/rejected": values[half:].detach().mean().item(),
    }


def _chosen_nll(logps: SequenceLogps, half: int) -> torch.Tensor:
    """Mean negative log-likelihood over every chosen answer token of the batch (the SFT term of DPO, CPO, ORPO)."""
    return -logps.token_logps[logps.token_sequence < half].mean()


@dataclass(frozen=True)
class DPO:
    beta: float
    loss: str = "sigmoid"
    label_smoothing: float = 0.0
    ftx: float = 0.0
    accuracy_key = "rewards/accuracies"

    def __call__(self, trainer: PreferenceTrainer, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, Metrics]:
        logps = trainer.forward_and_logprobs(model, batch)
        half = len(logps.sums) // 2
        chosen, rejected = logps.sums[:half], logps.sums[half:]
        ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
        losses = dpo_losses(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            loss=self.loss,
            label_smoothing=self.label_smoothing,
            chosen_tokens=logps.tokens[:half],
            rejected_tokens=logps.tokens[half:],
        )
        loss = losses.mean()
        if self.ftx:
            loss = loss + self.ftx * _chosen_nll(logps, half)
        chosen_rewards = self.beta * (chosen - ref_chosen).detach()
        rejected_rewards = self.beta * (rejected - ref_rejected).detach()
        return loss, _pair_metrics(chosen_rewards, rejected_rewards, logps, half, means=False)


@dataclass(frozen=True)
class SimPO:
    beta: float
    gamma: float
    ftx: float = 0.0
    accuracy_key = "rewards/accuracies"

    def __call__(self, trainer: PreferenceTrainer, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, Metrics]:
        logps = trainer.forward_and_logprobs(model, batch)
        half = len(logps.sums) // 2
        chosen, rejected = logps.means[:half], logps.means[half:]
        nll = _chosen_nll(logps, half)
        loss = simpo_losses(chosen, rejected, beta=self.beta, gamma=self.gamma).mean() + self.ftx * nll
        metrics = _pair_metrics(self.beta * chosen.detach(), self.beta * rejected.detach(), logps, half, means=True)
        return loss, {**metrics, "nll_loss": nll.item()}


@dataclass(frozen=True)
class ORPO:
    beta: float
    accuracy_key = "rewards/accuracies"

    def __call__(self, trainer: PreferenceTrainer, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, Metrics]:
        logps = trainer.forward_and_logprobs(model, batch)
        half = len(logps.sums) // 2
        chosen, rejected = logps.means[:half], logps.means[half:]
        log_odds = orpo_log_odds(chosen, rejected)
        ratio = torch.nn.functional.logsigmoid(log_odds)
        nll = _chosen_nll(logps, half)
        loss = nll - (self.beta * ratio).mean()
        metrics = _pair_metrics(self.beta * chosen.detach(), self.beta * rejected.detach(), logps, half, means=True)
        return loss, {
            **metrics,
            "nll_loss": nll.item(),
            "log_odds_ratio": ratio.mean().item(),
            "log_odds_chosen": log_odds.mean().item(),
        }


@dataclass(frozen=True)
class KTO:
    beta: float
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    accuracy_key = None

    def __call__(self, trainer: PreferenceTrainer, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, Metrics]:
        kept = continuation_cache(batch)  # the mismatched answers may continue this pass's prompts
        logps = trainer.forward_and_logprobs(model, batch, capture=kept).sums
        with torch.no_grad():  # the KL estimate is a reference point, not trained through (as TRL)
            policy_kl = trainer.forward_and_logprobs(model, batch, prefix="KL_", after=kept).sums
        desirable = batch["label"].to(torch.bool)
        ratios = logps - batch["ref_logps"]
        kl = kto_kl(policy_kl, batch["ref_KL_logps"])
        losses = kto_losses(
            ratios[desirable],
            ratios[~desirable],
            kl,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )
        metrics = {"kl": kl.item()}
        for name, rows in (("chosen", desirable), ("rejected", ~desirable)):
            if rows.any():
                metrics[f"rewards/{name}"] = (self.beta * ratios[rows].detach()).mean().item()
                metrics[f"logps/{name}"] = logps[rows].detach().mean().item()
        if desirable.any() and (~desirable).any():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses.nanmean(), metrics


@dataclass(frozen=True)
class Reward:
    center: float | None = None
    accuracy_key = "accuracy"

    def __call__(self, trainer: PreferenceTrainer, model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, Metrics]:
        with trainer.forward_context(model):
            scores = model.sequence_scores(batch, count_sequences(batch))
        half = len(scores) // 2
        chosen, rejected = scores[:half], scores[half:]
        loss = reward_loss(chosen, rejected, self.center)
        detached = scores.detach()
        return loss, {
            "min_reward": detached.min().item(),
            "mean_reward": detached.mean().item(),
            "max_reward": detached.max().item(),
            "accuracy": (chosen > rejected).float().mean().item(),
            "margin": (chosen - rejected).mean().item(),
        }


class PreferenceTrainer(FactoryTrainer):
    """factory's Trainer (chunked head, per-model walks once) with a stage ``objective`` as its loss.

    ``reference_seconds``: how long the reference pass took before training, reported with the
    final metrics (``factory bench``'s profile times the training steps from outside: the policy's
    forward and log-probabilities are :meth:`forward_and_logprobs`).
    """

    def __init__(
        self,
        *args: Any,
        objective: Any,
        eval_before: bool = False,
        reference_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.reference_seconds = reference_seconds
        self.objective = objective
        self.eval_before = eval_before
        self.model_accepts_loss_kwargs = False  # the objective averages over pairs; accumulation divides
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._epoch_accuracy: list[float] = []
        self._last_eval: dict[str, float] = {}

    def forward_context(self, model: Any) -> Any:
        """Autocast as the model's own forward would have it, adapters taking their input uncast."""
        stack = ExitStack()
        stack.enter_context(self.accelerator.autocast())
        stack.enter_context(self._adapter_inputs_uncast(model))
        return stack

    def forward_and_logprobs(
        self,
        model: Any,
        batch: dict[str, Any],
        prefix: str = "",
        capture: KeyCache | None = None,
        after: KeyCache | None = None,
    ) -> SequenceLogps:
        """The decoder over the batch and each sequence's log-probability (``prefix``: KTO's ``KL_`` rows).

        ``capture`` and ``after``: see :func:`~factory_plugin_trl.sequences.sequence_logps`.
        """
        return sequence_logps(
            model,
            batch,
            workspace=self.logits_workspace,
            prefix=prefix,
            autocast=lambda: self.forward_context(model),
            capture=capture,
            after=after,
        )

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        mode = "train" if model.training else "eval"
        loss, metrics = self.objective(self, model, inputs)
        for key, value in metrics.items():
            self._metrics[mode][key].append(value)
        key = self.objective.accuracy_key
        if mode == "train" and key in metrics:
            self._epoch_accuracy.append(metrics[key])
        return (loss, None) if return_outputs else loss

    def prediction_step(
        self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> Any:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        averaged = {prefix + key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        self._metrics[mode].clear()
        if mode == "eval":
            self._last_eval = averaged
        super().log({**logs, **averaged}, start_time)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The library's eval metrics plus the stage's (``eval_rewards/accuracies``, ``eval_accuracy``...)."""
        self._last_eval = {}
        metrics = super().evaluate(*args, **kwargs)
        return {**metrics, **self._last_eval}

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        before = None
        if self.eval_before and self.eval_dataset is not None and not resume_from_checkpoint:
            before = self.evaluate()
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        key = self.objective.accuracy_key
        if key and self._epoch_accuracy:
            # The mean over every training batch of the run: how often the reward ranked chosen first while training.
            output.metrics[f"train_{key}"] = sum(self._epoch_accuracy) / len(self._epoch_accuracy)
        if self.reference_seconds is not None:
            output.metrics["reference_seconds"] = round(self.reference_seconds, 3)
        if before is not None:
            # train() starts a fresh log, so the score before training goes back in as step 0.
            self.state.log_history.insert(0, {**before, "step": 0})
            output.metrics.update({f"before_{name}": value for name, value in before.items()})
        return output
