"""``build_trainer`` functions: each stage's trainer from the core's :class:`TrainerSetup`.

The core has loaded the model (method applied, frozen base in the compute precision, fused
projections), tokenized the data and built its collator (the data kind's: pairs packed one per
row, see :mod:`factory_plugin_trl.data`). These take the reference log-probabilities once where
the stage has a reference and build a :class:`PreferenceTrainer` with the stage's objective.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from factory.plugin_api import ConfigError, FactoryError, TrainerSetup, load_model, shares_prefixes
from factory_plugin_trl import reference
from factory_plugin_trl.collators import KTOCollator, PairCollator
from factory_plugin_trl.preference import DPO, KTO, ORPO, PreferenceTrainer, Reward, SimPO
from factory_plugin_trl.value_head import DedupedCheckpoints, ValueHeadModel

REFERENCE_BATCH = 8  # rows per batch of the reference pass, at least


def policy_collator(setup: TrainerSetup) -> Any:
    """The run's collator, computing each prompt once when the policy's attention can share it.

    About a quarter of a preference pair's tokens are its prompt (dpo_en_demo), which the other
    layouts compute twice, forward and backward. KTO's mismatched answers continue the prompts of
    the step's own pass (about 30% of kto_en_demo's tokens are prompt tokens).
    """
    collator = setup.collator
    if not (getattr(collator, "flatten", False) and shares_prefixes(setup.model)):
        return collator
    if isinstance(collator, PairCollator):
        return dataclasses.replace(collator, share_prompt=True)
    if isinstance(collator, KTOCollator):
        return dataclasses.replace(collator, continue_kl=True)
    return collator


def trainer(
    setup: TrainerSetup,
    objective: Any,
    *,
    model: Any = None,
    trainer_cls: type = PreferenceTrainer,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    **extra: Any,
) -> PreferenceTrainer:
    model = setup.model if model is None else model
    return trainer_cls(
        model=model,
        args=setup.arguments(prediction_loss_only=True),
        train_dataset=setup.train_dataset if train_dataset is None else train_dataset,
        eval_dataset=setup.eval_dataset if eval_dataset is None else eval_dataset,
        data_collator=policy_collator(setup),
        processing_class=setup.tokenizer,
        optimizers=(setup.optimizer(model), None),
        callbacks=setup.callbacks,
        objective=objective,
        **extra,
    )


def with_reference(
    setup: TrainerSetup, columns: tuple[str, ...], datasets: tuple[Any, Any], ref_model: str | None = None
) -> tuple[Any, Any]:
    """The train and eval rows with their reference log-probabilities (computed once, cached).

    The reference is the policy before training (see :func:`reference.as_reference`) or, with
    ``ref_model``, that model loaded frozen for this pass only.
    """
    cfg = setup.cfg
    device = setup.model.device
    separate = None
    if ref_model:
        ref_cfg = cfg.model_copy(update={"model": ref_model, "adapter": None})
        try:
            separate = load_model(ref_cfg, setup.manager, train=False).model
        except FactoryError as exc:
            raise ConfigError(
                f"dpo.ref_model '{ref_model}' cannot be loaded ({exc}); give a model folder or alias"
            ) from None
        separate.requires_grad_(False)
        separate.to(device)

    precision = getattr(setup.loaded, "compute_dtype", None)
    dtype = precision if precision in (torch.bfloat16, torch.float16) else None

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)

    identity = {
        "model": str(cfg.model),
        "adapter": cfg.adapter,
        "method": cfg.method,
        "quantization": cfg.quantization,
        "precision": str(dtype),
        "seed": cfg.seed,
        "ref_model": ref_model,
    }
    # No gradients and no optimizer state: bigger batches than training's keep the matrix units busy.
    batch_size = max(cfg.eval_batch_size or cfg.batch_size, REFERENCE_BATCH)

    def scored(dataset: Any) -> Any:
        if separate is not None:  # an inference model: the run's own layout, prompts repeated
            return reference.compute(
                separate.eval(),
                dataset,
                setup.collator,
                columns,
                batch_size=batch_size,
                autocast=autocast,
                device=device,
            )
        with reference.as_reference(setup.model) as model:  # the training steps' layout: they round alike
            return reference.compute(
                model, dataset, policy_collator(setup), columns, batch_size=batch_size, autocast=autocast, device=device
            )

    identity["weights"] = reference.model_identity(separate if separate is not None else setup.model)
    identity["layout"] = repr(setup.collator if separate is not None else policy_collator(setup))
    train, evaluation = (reference.attach(d, identity, columns, lambda d=d: scored(d)) for d in datasets)
    return train, evaluation  # a separate reference model is freed on return: only its log-probabilities stay


def build_dpo(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("dpo")
    started = time.perf_counter()
    train, evaluation = with_reference(
        setup, reference.PAIR_COLUMNS, (setup.train_dataset, setup.eval_dataset), opts.ref_model
    )
    objective = DPO(beta=opts.beta, loss=opts.loss, label_smoothing=opts.label_smoothing, ftx=opts.ftx)
    return trainer(
        setup, objective, train_dataset=train, eval_dataset=evaluation, reference_seconds=time.perf_counter() - started
    )


def build_kto(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("kto")
    started = time.perf_counter()
    datasets = tuple(
        None if d is None else reference.with_kl_pairs(d, setup.cfg.batch_size)
        for d in (setup.train_dataset, setup.eval_dataset)
    )
    train, evaluation = with_reference(setup, reference.KTO_COLUMNS, datasets)
    objective = KTO(beta=opts.beta, desirable_weight=opts.desirable_weight, undesirable_weight=opts.undesirable_weight)
    return trainer(
        setup, objective, train_dataset=train, eval_dataset=evaluation, reference_seconds=time.perf_counter() - started
    )


def build_simpo(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("simpo")
    return trainer(setup, SimPO(beta=opts.beta, gamma=opts.gamma, ftx=opts.ftx))


def build_orpo(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("orpo")
    return trainer(setup, ORPO(beta=opts.beta))


class RewardTrainer(DedupedCheckpoints, PreferenceTrainer):
    """The reward model's trainer: a :class:`ValueHeadModel`, checkpointed as a plain state dict."""


def build_rm(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("rm")
    model = ValueHeadModel(setup.model)
    return trainer(
        setup, Reward(center=opts.center_rewards), model=model, trainer_cls=RewardTrainer, eval_before=opts.eval_before
    )
