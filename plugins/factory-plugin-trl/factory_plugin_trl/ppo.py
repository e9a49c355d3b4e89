"""PPO: sample answers to the data set's prompts, score them, and update policy and value with clipped objectives.

Written here because TRL 1.x no longer ships PPO (its ``PPOTrainer`` and value-head models were
removed; the online trainers left, GRPO and RLOO, have no value model). It is a Hugging Face
Trainer whose training step is one PPO iteration, so schedule, logging, checkpoints and outputs
are the core's. Log-probabilities come from the core's chunked LM head.

One iteration on a batch of prompts:
1. generate answers with the policy (sampling settings ``ppo.*``);
2. score each answer: the reward model from an rm run (last-token value head), or a reward function;
3. per token: the policy's and the reference's log-probabilities, the value model's values;
   reward = score on the last token minus ``kl_coef * (logp - logp_ref)`` on every token;
4. advantages by GAE (``gamma``, ``lam``), whitened; returns = advantages + values;
5. ``epochs`` optimizer steps on the clipped policy objective and the clipped value loss.
``target_kl`` adapts ``kl_coef`` (adaptive KL control); otherwise it stays fixed.

Model sharing (``ppo.share_base``, LoRA family): the policy is the ``default`` adapter, the value
model a ``value`` adapter with its own head, the reward model the rm run's adapter loaded as
``reward``, and the reference the base with adapters disabled: one copy of the base weights.
Without sharing (or with full/freeze) each role is a separate model.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import Trainer
from trl.trainer.utils import selective_log_softmax

from factory.plugin_api import ConfigError, LogitsWorkspace, TrainerSetup, chunked_token_logprobs, split_head
from factory_plugin_trl.collators import PromptCollator
from factory_plugin_trl.value_head import (
    CheckpointableWrapper,
    DedupedCheckpoints,
    ValueHeadModel,
    is_peft,
    last_positions,
    load_head,
    load_reward_model,
)

log = logging.getLogger(__name__)

POLICY, VALUE, REWARD = "default", "value", "reward"
RewardFunction = Callable[[list[str], list[str]], list[float]]


# -- the models ------------------------------------------------------------------------------


@contextlib.contextmanager
def using(model: Any, adapter: str | None, *, trainable: bool = False) -> Iterator[None]:
    """Run the block with PEFT adapter ``adapter`` of a shared base active (None: the model as it is).

    peft freezes inactive adapters, so a backward pass must happen inside the block of its adapter.
    """
    if adapter is None:
        yield
        return
    model.set_adapter(adapter, inference_mode=not trainable)
    try:
        yield
    finally:
        model.set_adapter(POLICY)


class PPOModels(CheckpointableWrapper):
    """The policy and value model PPO trains, as one module for the optimizer, checkpoints and ``save``.

    The frozen reward model and reference are kept outside the module tree (``None`` when they are
    the shared base), so checkpoints hold only what trains.
    """

    def __init__(
        self, policy: Any, value: ValueHeadModel, reward: ValueHeadModel | None, reference: Any | None
    ) -> None:
        super().__init__()
        self.policy = policy
        self.value = value
        self.config = policy.config
        self.frozen = {"reward": reward, "reference": reference}

    @property
    def reward(self) -> ValueHeadModel | None:
        return self.frozen["reward"]

    @property
    def reference(self) -> Any | None:
        return self.frozen["reference"]

    @property
    def shared(self) -> bool:
        return self.value.adapter is not None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.policy(*args, **kwargs)

    @contextlib.contextmanager
    def as_reference(self) -> Iterator[Any]:
        """The reference policy: the separate frozen copy, or the shared base with its adapters disabled."""
        if self.reference is not None:
            yield self.reference
        else:
            with self.policy.disable_adapter():
                yield self.policy

    def save_pretrained(self, output_dir: str, **kwargs: Any) -> None:
        """The trained policy only, as its method saves it (the other adapters of a shared base stay out)."""
        if self.shared:
            kwargs["selected_adapters"] = [POLICY]
        self.policy.save_pretrained(output_dir, **kwargs)


def read_rm_run(folder: str) -> dict[str, Any]:
    """The saved config of an rm run, checked to be one."""
    path = Path(folder)
    saved = path / "factory_config.yaml"
    if not path.is_dir() or not saved.is_file():
        raise ConfigError(
            f"ppo.reward_model '{folder}' is not the output_dir of a factory run; train one with stage=rm"
        )
    run = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    if run.get("stage") != "rm":
        raise ConfigError(
            f"ppo.reward_model '{folder}' is the output of stage {run.get('stage')}, not rm; give an rm run's output_dir"
        )
    return run


def load_reward_function(target: str) -> RewardFunction:
    module, sep, attr = target.partition(":")
    try:
        function = getattr(importlib.import_module(module), attr) if sep and attr else None
    except (ImportError, AttributeError):
        function = None
    if not callable(function):
        raise ConfigError(
            f"ppo.reward_function '{target}' is not an importable callable; give 'package.module:function' "
            "taking (prompts, responses) and returning one float per response"
        )
    return function


def shared_models(setup: TrainerSetup, rm_dir: str | None) -> PPOModels:
    """Policy, value and reward as adapters of the one loaded base; the reference is the base itself."""
    policy = setup.model
    reward = None
    if rm_dir is not None and (Path(rm_dir) / "adapter_config.json").is_file():
        policy.load_adapter(rm_dir, adapter_name=REWARD, is_trainable=False)
        reward = ValueHeadModel(policy, load_head(rm_dir, policy), adapter=REWARD)
        # The value model starts as the reward model (a common PPO choice): its estimates mean something from step 1.
        policy.load_adapter(rm_dir, adapter_name=VALUE, is_trainable=True)
        value_head = load_head(rm_dir, policy).requires_grad_(True)
    else:
        if rm_dir is not None:
            log.info("reward model %s holds whole weights, not an adapter: it is loaded as a separate model", rm_dir)
            reward = load_reward_model(rm_dir, setup.cfg, setup.manager)
        config = dataclasses.replace(copy.deepcopy(policy.peft_config[POLICY]), init_lora_weights=True)
        policy.add_adapter(VALUE, config)
        value_head = None
    policy.set_adapter(POLICY)
    return PPOModels(policy, ValueHeadModel(policy, value_head, adapter=VALUE), reward, None)


def frozen_copy(model: Any) -> Any:
    """A separate reference: the untrained model, copied and frozen (what sharing the base saves).

    Of a PeftModel the transformers model inside is copied, its untrained adapter layers included,
    so the copy computes the initial policy.
    """
    ref = copy.deepcopy(model.get_base_model() if is_peft(model) else model)
    ref.requires_grad_(False)
    return ref.eval()


def separate_models(setup: TrainerSetup, rm_dir: str | None) -> PPOModels:
    """Each role its own model: a frozen reference copy, a value copy trained with the run's method, the rm run."""
    policy = setup.model
    reference = frozen_copy(policy)
    value = ValueHeadModel(copy.deepcopy(policy))
    reward = load_reward_model(rm_dir, setup.cfg, setup.manager) if rm_dir is not None else None
    return PPOModels(policy, value, reward, reference)


def build_ppo(setup: TrainerSetup) -> PPOTrainer:
    """The PPO trainer for the core's run (``ppo.*`` options; the stage checked the reward source)."""
    from factory.plugin_api import stop_tokens

    cfg, opts = setup.cfg, setup.cfg.options("ppo")
    rm_dir = opts.reward_model
    if rm_dir is not None:
        run = read_rm_run(rm_dir)
        if run.get("model") != cfg.model:
            raise ConfigError(
                f"ppo.reward_model '{rm_dir}' was trained on model '{run.get('model')}' but this run trains "
                f"'{cfg.model}'; train the reward model on the same base model (they must share a tokenizer)"
            )
    reward_function = load_reward_function(opts.reward_function) if opts.reward_function else None
    models = (
        shared_models(setup, rm_dir) if opts.share_base and is_peft(setup.model) else separate_models(setup, rm_dir)
    )
    optimizer = _optimizer(setup, models)
    stop_ids, _ = stop_tokens(setup.tokenizer, setup.template, setup.model)
    return PPOTrainer(
        models=models,
        options=opts,
        reward_function=reward_function,
        stop_ids=stop_ids,
        args=setup.arguments(),
        train_dataset=setup.train_dataset,
        data_collator=PromptCollator(setup.tokenizer.pad_token_id),
        processing_class=setup.tokenizer,
        optimizers=(optimizer, None),
        callbacks=setup.callbacks,
    )


def _optimizer(setup: TrainerSetup, models: PPOModels) -> Any:
    """The optimizer over policy and value; on a shared base both adapters must count as trainable while it is built."""
    if models.shared:
        models.policy.base_model.set_adapter([POLICY, VALUE])
    try:
        return setup.optimizer(models)
    finally:
        if models.shared:
            models.policy.set_adapter(POLICY)


# -- the algorithm ---------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of prompts with generated answers and everything the PPO update needs (no gradients)."""

    input_ids: torch.Tensor  # prompt + answer, (batch, length); the prompt is left-padded
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompt_length: int
    mask: torch.Tensor  # answer tokens, (batch, answer length) float
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8) * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and returns over the answer tokens (values past the end are 0)."""
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


class KLController:
    """The KL penalty's weight: fixed, or adapted toward ``target`` (Ziegler et al. 2019, adaptive KL control)."""

    def __init__(self, coef: float, target: float | None, horizon: int) -> None:
        self.coef, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, samples: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * samples / self.horizon


class PPOTrainer(DedupedCheckpoints, Trainer):
    """A Trainer whose step is one PPO iteration on a batch of prompts (see the module docstring)."""

    def __init__(
        self,
        *,
        models: PPOModels,
        options: Any,
        reward_function: RewardFunction | None,
        stop_ids: list[int],
        **kwargs: Any,
    ) -> None:
        super().__init__(model=models, **kwargs)
        self.models = models
        self.opts = options
        self.reward_function = reward_function
        self.stop_ids = torch.tensor(stop_ids, device=self.args.device)
        self.kl_control = KLController(options.kl_coef, options.target_kl, options.kl_horizon)
        for frozen in models.frozen.values():
            if frozen is not None:
                frozen.to(self.args.device)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.logits_workspace = LogitsWorkspace()

    # forward passes

    def _answer_logprobs(self, model: Any, rollout: Rollout | dict[str, Any]) -> torch.Tensor:
        """Log-probabilities of the answer tokens under ``model``: only the answer positions reach the LM head, a chunk
        at a time (``chunked_token_logprobs``), so no full-vocabulary logits exist for the batch."""
        ids, start = rollout["input_ids"], rollout["prompt_length"]
        parts = split_head(model)
        if parts is not None:
            decoder, head = parts
            with self.compute_loss_context_manager(), self.accelerator.autocast():
                hidden = decoder(
                    input_ids=ids,
                    attention_mask=rollout["attention_mask"],
                    position_ids=rollout["position_ids"],
                    use_cache=False,
                ).last_hidden_state[:, start - 1 : -1]
            answers = ids[:, start:]
            logps = chunked_token_logprobs(
                hidden.flatten(0, 1),
                head,
                answers.flatten(),
                workspace=self.logits_workspace,
                temperature=self.opts.temperature,
            )
            return logps.view(answers.shape)
        # a model that transforms its logits (soft-capping, scaling): its own head on the answer positions
        with self.compute_loss_context_manager():
            logits = model(
                input_ids=ids,
                attention_mask=rollout["attention_mask"],
                position_ids=rollout["position_ids"],
                use_cache=False,
                logits_to_keep=ids.shape[1] - start + 1,
            ).logits[:, :-1]
        return selective_log_softmax(logits.float() / self.opts.temperature, ids[:, start:])

    def _values(self, rollout: Rollout | dict[str, Any]) -> torch.Tensor:
        """The value model's estimate before each answer token."""
        with self.compute_loss_context_manager():
            values = self.models.value.values(rollout["input_ids"], rollout["attention_mask"], rollout["position_ids"])
        start = rollout["prompt_length"]
        return values[:, start - 1 : -1]

    def _scores(self, batch: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
        if self.reward_function is not None:
            start = batch["prompt_length"]
            tok = self.processing_class
            prompts = [
                tok.decode(ids[m.bool()])
                for ids, m in zip(batch["input_ids"][:, :start], batch["attention_mask"][:, :start])
            ]
            answers = [
                tok.decode(ids[m.bool()], skip_special_tokens=True)
                for ids, m in zip(batch["input_ids"][:, start:], mask)
            ]
            scores = self.reward_function(prompts, answers)
            if len(scores) != len(answers):
                raise ConfigError(
                    f"ppo.reward_function returned {len(scores)} scores for {len(answers)} answers; return one float per answer"
                )
            return torch.tensor([float(s) for s in scores], device=mask.device)
        reward = self.models.reward
        with using(reward.model, reward.adapter), self.compute_loss_context_manager():
            return reward.scores(batch["input_ids"], batch["attention_mask"], batch["position_ids"]).float()

    # one iteration

    @torch.no_grad()
    def rollout(self, prompts: dict[str, torch.Tensor]) -> tuple[Rollout, dict[str, float]]:
        """Generate answers and compute their rewards, advantages and returns."""
        models, opts = self.models, self.opts
        models.eval()
        start = prompts["input_ids"].shape[1]
        sampling = {"top_k": opts.top_k} if opts.top_k else {}
        output = models.policy.generate(
            **prompts,
            do_sample=True,
            max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature,
            top_p=opts.top_p,
            eos_token_id=self.stop_ids.tolist(),
            pad_token_id=self.processing_class.pad_token_id,
            use_cache=True,
            **sampling,
        )
        answers = output[:, start:]
        stops = torch.isin(answers, self.stop_ids).long()
        mask = ((stops.cumsum(1) - stops) == 0).float()  # up to and including the first stop token
        attention_mask = torch.cat((prompts["attention_mask"], mask.long()), dim=1)
        batch = {
            "input_ids": output,
            "attention_mask": attention_mask,
            "position_ids": (attention_mask.cumsum(1) - 1).clamp(min=0),
            "prompt_length": start,
        }
        logprobs = self._answer_logprobs(models.policy, batch)
        with models.as_reference() as reference:
            ref_logprobs = self._answer_logprobs(reference, batch)
        with using(models.policy, models.value.adapter):
            values = self._values(batch) * mask
        scores = self._scores(batch, mask)

        kl = (logprobs - ref_logprobs) * mask
        rewards = -self.kl_control.coef * kl
        last = last_positions(mask)
        rewards[torch.arange(len(last)), last] += scores
        advantages, returns = gae(rewards, values, mask, opts.gamma, opts.lam)
        rollout = Rollout(
            **batch, mask=mask, logprobs=logprobs, values=values, advantages=whiten(advantages, mask), returns=returns
        )
        stats = {
            "reward": scores.mean().item(),
            "kl": kl.sum(1).mean().item(),
            "kl_coef": self.kl_control.coef,
            "response_length": mask.sum(1).mean().item(),
        }
        return rollout, stats

    def ppo_update(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, float]]:
        """One pass of the clipped objectives; gradients accumulate for the optimizer step that follows."""
        opts, models, mask = self.opts, self.models, rollout.mask
        models.train()
        batch = vars(rollout)
        logprobs = self._answer_logprobs(models.policy, batch)
        ratio = torch.exp(logprobs - rollout.logprobs)
        clipped = torch.clamp(ratio, 1 - opts.clip_range, 1 + opts.clip_range)
        policy_loss = masked_mean(torch.max(-rollout.advantages * ratio, -rollout.advantages * clipped), mask)
        self.accelerator.backward(policy_loss)

        with using(models.policy, models.value.adapter, trainable=True):
            values = self._values(batch)
            values_clipped = rollout.values + torch.clamp(values - rollout.values, -opts.value_clip, opts.value_clip)
            value_loss = 0.5 * masked_mean(
                torch.max((values - rollout.returns) ** 2, (values_clipped - rollout.returns) ** 2), mask
            )
            self.accelerator.backward(opts.vf_coef * value_loss)
        stats = {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "clip_fraction": masked_mean(((ratio - 1).abs() > opts.clip_range).float(), mask).item(),
        }
        return (policy_loss + opts.vf_coef * value_loss).detach(), stats

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        rollout, stats = self.rollout(self._prepare_inputs(inputs))
        for epoch in range(self.opts.epochs):
            if epoch:  # every pass but the last gets its own step here; the Trainer steps after the last
                if self.args.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            loss, update = self.ppo_update(rollout)
        self.kl_control.update(stats["kl"], len(rollout.mask))
        for key, value in {**stats, **update}.items():
            self._metrics[key].append(value)
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs.update({key: sum(values) / len(values) for key, values in self._metrics.items() if values})
        self._metrics.clear()
        super().log(logs, start_time)
