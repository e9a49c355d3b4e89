"""``build_trainer`` functions: a TRL trainer for each stage from the core's :class:`TrainerSetup`.

The core has loaded the model (method applied), tokenized the data and chosen the callbacks;
these add what the stage needs (a reference model, a value head) and the TRL config.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from trl import DPOConfig, KTOConfig, RewardConfig
from trl.experimental.cpo import CPOConfig
from trl.experimental.orpo import ORPOConfig

from factory.plugin_api import TrainerSetup
from factory_plugin_trl.collators import CompletionMaskCollator, KTOPairsCollator, UnlabelledCollator
from factory_plugin_trl.trainers import (
    FactoryDPOTrainer,
    FactoryKTOTrainer,
    FactoryORPOTrainer,
    FactoryRewardTrainer,
    FactorySimPOTrainer,
    trl_errors,
)
from factory_plugin_trl.value_head import ValueHeadModel, is_peft


def trl_arguments(setup: TrainerSetup, config_cls: type, **fields: Any) -> Any:
    """The run's TrainingArguments as a TRL config.

    TRL configs switch checkpointing on by default; the core's loader already applied the run's
    choice to the model, so the Trainer must not switch it again (transformers 5 renamed the field).
    """
    names = {f.name for f in dataclasses.fields(config_cls)}
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return setup.arguments(config_cls, dataset_num_proc=None, **{checkpointing: False}, **fields)


def frozen_copy(model: Any) -> Any:
    """A separate reference: the untrained model, copied and frozen (what sharing the base saves).

    Of a PeftModel the transformers model inside is copied, its untrained adapter layers included,
    so the copy computes the initial policy and TRL can patch it like any causal LM.
    """
    ref = copy.deepcopy(model.get_base_model() if is_peft(model) else model)
    ref.requires_grad_(False)
    return ref.eval()


def reference_model(setup: TrainerSetup, share_base: bool) -> Any:
    """None when the reference is the base with the adapter disabled (LoRA family, shared), else a frozen copy."""
    return None if share_base and is_peft(setup.model) else frozen_copy(setup.model)


def common(setup: TrainerSetup) -> dict[str, Any]:
    return dict(
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        processing_class=setup.tokenizer,
        callbacks=setup.callbacks,
    )


def build_dpo(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("dpo")
    losses, weights = [opts.loss], None
    if opts.ftx:
        losses, weights = [opts.loss, "sft"], [1.0, opts.ftx]
    args = trl_arguments(setup, DPOConfig, beta=opts.beta, loss_type=losses, loss_weights=weights, max_length=None)
    ref = reference_model(setup, opts.share_base)
    with trl_errors("dpo"):
        return FactoryDPOTrainer(
            model=setup.model, ref_model=ref, args=args, data_collator=CompletionMaskCollator(setup.collator),
            optimizers=(setup.optimizer(), None), **common(setup),
        )


def build_kto(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("kto")
    args = trl_arguments(
        setup, KTOConfig, beta=opts.beta, desirable_weight=opts.desirable_weight,
        undesirable_weight=opts.undesirable_weight, max_length=None, train_sampling_strategy="sequential",
    )
    ref = reference_model(setup, opts.share_base)
    with trl_errors("kto"):
        return FactoryKTOTrainer(
            model=setup.model, ref_model=ref, args=args, data_collator=KTOPairsCollator(setup.collator),
            optimizers=(setup.optimizer(), None), **common(setup),
        )


def build_simpo(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("simpo")
    args = trl_arguments(
        setup, CPOConfig, loss_type="simpo", beta=opts.beta, simpo_gamma=opts.gamma, cpo_alpha=opts.ftx,
        max_length=setup.cfg.cutoff_len,
    )
    with trl_errors("simpo"):
        return FactorySimPOTrainer(
            model=setup.model, args=args, data_collator=setup.collator, optimizers=(setup.optimizer(), None),
            **common(setup),
        )


def build_orpo(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("orpo")
    args = trl_arguments(setup, ORPOConfig, beta=opts.beta, max_length=setup.cfg.cutoff_len)
    with trl_errors("orpo"):
        return FactoryORPOTrainer(
            model=setup.model, args=args, data_collator=setup.collator, optimizers=(setup.optimizer(), None),
            **common(setup),
        )


def build_rm(setup: TrainerSetup) -> Any:
    opts = setup.cfg.options("rm")
    model = ValueHeadModel(setup.model)
    args = trl_arguments(setup, RewardConfig, center_rewards_coefficient=opts.center_rewards, max_length=None)
    with trl_errors("rm"):
        return FactoryRewardTrainer(
            model=model, args=args, data_collator=UnlabelledCollator(setup.collator),
            optimizers=(setup.optimizer(model), None), eval_before=opts.eval_before, **common(setup),
        )
