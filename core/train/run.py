"""Run a causal-LM training stage on the Hugging Face Trainer.

The stage chooses the data kind; everything else (model pipeline, data worker, method,
optimizer, callbacks, outputs) is shared by every stage built on the Trainer.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.config import RunConfig
from factory.errors import ConfigError, FactoryError
from factory.model.loader import LoadedModel, load_model, supports_packed_positions, trainable_summary
from factory.model.precision import resolve_precision
from factory.plugins import PluginManager
from factory.train import checkpoints, outputs
from factory.train.distributed import gathered_weights
from factory.train.optim import default_param_groups
from factory.train.record import TrainingRecord

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


# Called with (setup, trainer) for every trainer a run builds, before it trains: how the benchmark
# times and profiles exactly the run a stage makes (``factory bench``), whatever its trainer is.
_OBSERVERS: list[Callable[[TrainerSetup, Any], None]] = []


@contextmanager
def observe_trainers(observer: Callable[[TrainerSetup, Any], None]) -> Iterator[None]:
    """Within the block, every training run calls ``observer(setup, trainer)`` once its trainer is built."""
    _OBSERVERS.append(observer)
    try:
        yield
    finally:
        _OBSERVERS.remove(observer)


def is_distributed_worker() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def training_arguments(cfg: RunConfig, out: Path, *, has_eval: bool, args_cls: Any = None, **overrides: Any) -> Any:
    """TrainingArguments from the config: precision, schedule, checkpoints, CPU/gloo for distributed CPU runs.

    ``args_cls`` is a subclass of ``TrainingArguments`` (a stage's own trainer config); ``overrides``
    set its extra fields or replace the config's values.
    """
    from transformers import TrainingArguments

    from factory import hardware
    from factory.train.distributed import trainer_settings

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
        **trainer_settings(cfg),
        report_to=cfg.report_to or "none",
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        logging_nan_inf_filter=False,  # a diverged loss is logged as it is (stop-on-nan reads it), not averaged away
        dataloader_num_workers=0,
        disable_tqdm=False,
        torch_compile=cfg.torch_compile,
    )
    if not cfg.shuffle:
        kwargs["train_sampling_strategy"] = "sequential"
    kwargs.update(overrides)
    return (args_cls or TrainingArguments)(**kwargs)


@dataclass
class TrainerSetup:
    """Everything loaded and tokenized, nothing trained yet: what a stage's ``build_trainer`` builds from.

    Stages whose trainer is not the plain Trainer (preference losses, a value head, a reference
    model) receive this instead of re-doing the shared work, and return their trainer.
    """

    cfg: RunConfig
    manager: PluginManager
    loaded: LoadedModel
    template: Any
    train_dataset: Any
    eval_dataset: Any
    collator: Any
    callbacks: list[Any]
    output_dir: Path

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def adapter(self) -> Any:
        return self.loaded.adapter

    def arguments(self, args_cls: Any = None, **overrides: Any) -> Any:
        """:func:`training_arguments` for this run (``args_cls``: e.g. a TRL trainer's config class)."""
        return training_arguments(
            self.cfg, self.output_dir, has_eval=self.eval_dataset is not None, args_cls=args_cls, **overrides
        )

    def optimizer(self, model: Any = None) -> Any:
        """The configured optimizer plugin over the adapter's parameter groups of ``model`` (default: the loaded model).

        A stage that adds trainable modules (a value head) passes the model that holds them.
        """
        model = self.model if model is None else model
        adapter = self.adapter
        groups = (
            adapter.param_groups(model, self.cfg)
            if hasattr(adapter, "param_groups")
            else default_param_groups(model, self.cfg)
        )
        return self.manager.load("optimizers", self.cfg.optimizer).create(model, self.cfg, groups)


def default_trainer(setup: TrainerSetup, trainer_cls: Any = None) -> Any:
    """factory's Trainer (or ``trainer_cls``, a Trainer subclass with the same signature) over ``setup``."""
    from factory.train.trainer import FactoryTrainer

    # A patch that took over the loss (Liger's fused linear cross-entropy) needs the model's own forward.
    chunked = setup.cfg.chunked_loss and "loss" not in (setup.loaded.facts.replaces or ())
    extra = {"chunked_loss": chunked} if trainer_cls is None else {}
    return (trainer_cls or FactoryTrainer)(
        **extra,
        model=setup.model,
        args=setup.arguments(prediction_loss_only=True),  # nothing reads the eval logits: never gather them
        train_dataset=setup.train_dataset,
        eval_dataset=setup.eval_dataset,
        data_collator=setup.collator,
        processing_class=setup.tokenizer,
        optimizers=(setup.optimizer(), None),
        callbacks=setup.callbacks,
    )


def final_evaluation(trainer: Any) -> dict[str, Any]:
    """The eval metrics of the trained model: transformers evaluates at the last step on its own, so reuse that."""
    state = trainer.state
    last = next((entry for entry in reversed(state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == state.global_step:
        return {key: value for key, value in last.items() if key.startswith("eval_")}
    return trainer.evaluate()


def _batch_layout(cfg: RunConfig, loaded: LoadedModel) -> Any:
    """The config's batch layout, overruled by what the patches decided and by what the model supports."""
    from factory.data.processing import BatchLayout, batch_layout

    if not supports_packed_positions(loaded.model):
        if cfg.packing:
            raise ConfigError(
                f"packing=true needs a model whose attention honours restarting position ids, and "
                f"{type(loaded.model).__name__} builds its own mask; set packing=false"
            )
        log.warning("%s builds its own attention mask: using padded batches", type(loaded.model).__name__)
        return BatchLayout(padding_free=False, packing=False, restarts=False)
    return batch_layout(cfg, loaded.facts)


def _resume_point(out: Path) -> str | None:
    """The checkpoint ``resume=true`` continues from, saying which newer ones it skipped and why."""
    chosen, skipped = checkpoints.choose_resume(out)
    for name, reason in skipped:
        print(f"factory: skipping {out / name} for resume: {reason}", file=sys.stderr)
    if chosen is not None:
        print(f"factory: resuming from {chosen}", file=sys.stderr)
        return str(chosen)
    if skipped or any(child.name != outputs.OWNER_FILE for child in out.iterdir()):
        why = f" (skipped {', '.join(name for name, _ in skipped)})" if skipped else ""
        raise ConfigError(
            f"resume=true but output_dir '{out}' holds no complete checkpoint-* folder{why}; "
            "set save_steps to write checkpoints, or pass overwrite_output_dir=true instead of resume=true to start over"
        )
    return None


def _save_final(out: Path, write: Callable[[Path], None]) -> None:
    """:func:`outputs.save_final`, and on failure one sentence naming what survives: the last checkpoint, a rescue copy."""
    try:
        outputs.save_final(out, write)
    except KeyboardInterrupt:
        print(
            f"factory: interrupted during the final save; nothing was written to '{out}'{_survivor(out)}",
            file=sys.stderr,
        )
        raise
    except OSError as exc:
        rescue = Path(tempfile.mkdtemp(prefix="factory-rescue-"))
        try:
            write(rescue)
            saved = f"; the trained weights were saved to '{rescue}' instead"
        except Exception:
            shutil.rmtree(rescue, ignore_errors=True)
            saved = ""
        raise FactoryError(
            f"the final save to '{out}' failed ({exc.strerror or exc}){saved}{_survivor(out)}; free space or choose "
            "another output_dir"
        ) from None


def _survivor(out: Path) -> str:
    last = checkpoints.latest_complete(out)
    return f"; the last complete checkpoint is '{last}' (resume=true continues from it)" if last else ""


def run_training(
    cfg: RunConfig,
    manager: PluginManager,
    data_kind: str,
    trainer_cls: Any = None,
    build_trainer: Callable[[TrainerSetup], Any] | None = None,
) -> TrainingRun:
    """Train ``cfg`` and write every output; returns the final metrics.

    ``build_trainer(setup)`` lets a stage build its own trainer from the loaded model and data
    (default: :func:`default_trainer` with ``trainer_cls``). Whatever model that trainer holds is
    saved with the method's ``save``, which calls its ``save_pretrained``.
    """
    started = time.time()
    # Every run goes into the results database (config, loss curve, outputs, final status), once: by rank 0.
    record = TrainingRecord(cfg, manager) if int(os.environ.get("RANK", "0")) == 0 else None
    try:
        out = outputs.prepare_output_dir(cfg)
        try:
            run = _train(cfg, manager, data_kind, trainer_cls, build_trainer, out, started, record)
        except BaseException:
            outputs.release_output_dir(out)
            raise
    except BaseException as exc:
        if record is not None:
            record.fail(exc)
        raise
    if record is not None:
        record.finish(run.metrics, run.output_dir)
    return run


def _train(
    cfg: RunConfig,
    manager: PluginManager,
    data_kind: str,
    trainer_cls: Any,
    build_trainer: Callable[[TrainerSetup], Any] | None,
    out: Path,
    started: float,
    record: TrainingRecord | None,
) -> TrainingRun:
    from transformers import set_seed

    from factory.data.template import get_template
    from factory.data.worker import build_datasets
    from factory.train.memory import reused_heap

    resume_from = _resume_point(out) if cfg.resume else None
    set_seed(cfg.seed)
    if cfg.kernel_cache_limit:
        from factory.train.memory import bound_kernel_caches

        bound_kernel_caches()  # before the model's first matmul, when the libraries read it

    loaded: LoadedModel = load_model(cfg, manager, train=True)
    layout = _batch_layout(cfg, loaded)
    tokenizer, adapter = loaded.tokenizer, loaded.adapter
    template = get_template(cfg.template, tokenizer, manager)
    train_ds, eval_ds, collator, data_stats = build_datasets(cfg, manager, tokenizer, template, data_kind, layout)

    optimizer_impl = manager.load("optimizers", cfg.optimizer)
    callbacks = list(getattr(optimizer_impl, "callbacks", lambda _cfg: [])(cfg))
    callbacks += [manager.load("callbacks", name).create(cfg) for name in cfg.callbacks]
    if cfg.trim_memory:
        from factory.train.memory import TrimHeap

        callbacks.append(TrimHeap())

    setup = TrainerSetup(cfg, manager, loaded, template, train_ds, eval_ds, collator, callbacks, out)
    if record is not None:  # the record's callback reaches the trainer as every stage's callbacks do
        setup.callbacks.append(record.callback(setup))
    # From the trainer's build (a stage's reference pass runs there) to the final evaluation.
    with reused_heap(cfg.reuse_memory and not cfg.trim_memory):
        trainer = build_trainer(setup) if build_trainer is not None else default_trainer(setup, trainer_cls)
        for observer in list(_OBSERVERS):
            observer(setup, trainer)
        checkpoints.stage_checkpoints(trainer)
        model = trainer.model
        trainable, total = trainable_summary(model)
        if trainer.is_world_process_zero():
            print(
                f"factory: {cfg.stage}/{cfg.method} on {cfg.model}: {trainable:,} of {total:,} parameters train "
                f"({100 * trainable / max(total, 1):.2f}%), precision {resolve_precision(cfg.precision)}, output {out}"
            )
        result = trainer.train(resume_from_checkpoint=resume_from)
        metrics: dict[str, Any] = dict(result.metrics)
        if eval_ds is not None:
            metrics.update(final_evaluation(trainer))
    metrics["data"] = data_stats if isinstance(data_stats, dict) else getattr(data_stats, "__dict__", str(data_stats))
    metrics["trainable_parameters"] = trainable
    metrics["total_parameters"] = total
    metrics["log_history"] = trainer.state.log_history

    with gathered_weights(trainer):  # ZeRO-3: every rank takes part in gathering what rank 0 saves
        if trainer.is_world_process_zero():
            _save_run(trainer, adapter, tokenizer, cfg, manager, out, metrics, started, resume_from)
    metrics["output_dir"] = str(out)
    return TrainingRun(metrics, out, trainer.model, tokenizer, template, trainer)


def _save_run(
    trainer: Any,
    adapter: Any,
    tokenizer: Any,
    cfg: RunConfig,
    manager: PluginManager,
    out: Path,
    metrics: dict[str, Any],
    started: float,
    resume_from: str | None,
) -> None:
    """Rank 0 writes the final outputs: the method's weights, tokenizer, config, metrics, plot and run record."""
    model = trainer.model if not hasattr(trainer.model, "module") else trainer.model.module

    def write(folder: Path) -> None:
        adapter.save(model, str(folder))
        tokenizer.save_pretrained(str(folder))
        outputs.write_config(folder, cfg)
        outputs.write_metrics(folder, metrics)
        outputs.plot_loss(folder, trainer.state.log_history)
        outputs.write_record(
            folder, cfg, manager, started, {"resumed_from": resume_from, "world_size": trainer.args.world_size}
        )

    _save_final(out, write)
