"""Run a causal-LM training stage on the Hugging Face Trainer.

The stage chooses the data kind; everything else (model pipeline, data worker, method,
optimizer, callbacks, outputs) is shared by every stage built on the Trainer.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.config import RunConfig
from factory.errors import ConfigError
from factory.model.loader import LoadedModel, load_model, resolve_precision, trainable_summary
from factory.plugins import PluginManager
from factory.train import outputs
from factory.train.optim import default_param_groups

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    """What a finished run hands back to its stage (e.g. to show a sample answer)."""

    metrics: dict[str, Any]
    output_dir: Path
    model: Any
    tokenizer: Any
    template: Any
    trainer: Any


def is_distributed_worker() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_arguments(cfg: RunConfig, out: Path, *, has_eval: bool, **overrides: Any) -> Any:
    """TrainingArguments from the config: precision, schedule, checkpoints, CPU/gloo for distributed CPU runs."""
    from transformers import TrainingArguments

    from factory import hardware

    precision = resolve_precision(cfg.precision)
    on_cpu = not hardware.cuda_devices()
    eval_every = cfg.eval_steps or cfg.save_steps
    kwargs: dict[str, Any] = dict(
        output_dir=str(out),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size or cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps or cfg.warmup_ratio,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        eval_strategy=("steps" if eval_every else "epoch") if has_eval else "no",
        eval_steps=eval_every,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=on_cpu,
        ddp_backend="gloo" if on_cpu and is_distributed_worker() else None,
        deepspeed=cfg.deepspeed,
        fsdp=cfg.fsdp or "",
        report_to=cfg.report_to or "none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def run_training(cfg: RunConfig, manager: PluginManager, data_kind: str, trainer_cls: Any = None) -> TrainingRun:
    """Train ``cfg`` and write every output; returns the final metrics."""
    from transformers import Trainer, set_seed

    from factory.data.processing import build_datasets
    from factory.data.template import get_template

    started = time.time()
    out = outputs.prepare_output_dir(cfg)
    resume_from = None
    if cfg.resume:
        resume_from = outputs.last_checkpoint(out)
        if resume_from is None and any(out.iterdir()):
            raise ConfigError(f"resume=true but output_dir '{out}' holds no checkpoint-* folder; set save_steps to write checkpoints")
    set_seed(cfg.seed)

    loaded: LoadedModel = load_model(cfg, manager, train=True)
    model, tokenizer, adapter = loaded.model, loaded.tokenizer, loaded.adapter
    template = get_template(cfg.template, tokenizer, manager)
    train_ds, eval_ds, collator, data_stats = build_datasets(cfg, manager, tokenizer, template, data_kind)

    groups = adapter.param_groups(model, cfg) if hasattr(adapter, "param_groups") else default_param_groups(model, cfg)
    optimizer_impl = manager.load("optimizers", cfg.optimizer)
    optimizer = optimizer_impl.create(model, cfg, groups)
    callbacks = list(getattr(optimizer_impl, "callbacks", lambda _cfg: [])(cfg))
    callbacks += [manager.load("callbacks", name).create(cfg) for name in cfg.callbacks]

    args = training_arguments(cfg, out, has_eval=eval_ds is not None)
    trainer = (trainer_cls or Trainer)(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=collator,
        processing_class=tokenizer,
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    trainable, total = trainable_summary(model)
    if trainer.is_world_process_zero():
        print(f"factory: {cfg.stage}/{cfg.method} on {cfg.model}: {trainable:,} of {total:,} parameters train "
              f"({100 * trainable / max(total, 1):.2f}%), precision {resolve_precision(cfg.precision)}, output {out}")
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics: dict[str, Any] = dict(result.metrics)
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    metrics["data"] = data_stats if isinstance(data_stats, dict) else getattr(data_stats, "__dict__", str(data_stats))
    metrics["trainable_parameters"] = trainable
    metrics["total_parameters"] = total
    metrics["log_history"] = trainer.state.log_history

    if trainer.is_world_process_zero():
        adapter.save(trainer.model if not hasattr(trainer.model, "module") else trainer.model.module, str(out))
        tokenizer.save_pretrained(str(out))
        outputs.write_config(out, cfg)
        outputs.write_metrics(out, metrics)
        outputs.plot_loss(out, trainer.state.log_history)
        outputs.write_record(out, cfg, manager, started, {"resumed_from": resume_from, "world_size": trainer.args.world_size})
    metrics["output_dir"] = str(out)
    return TrainingRun(metrics, out, trainer.model, tokenizer, template, trainer)
