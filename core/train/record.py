"""Every training run recorded in the results database, as it goes.

The shared training run (:func:`factory.train.run.run_training`) keeps a :class:`TrainingRecord`, so a run
from the CLI, from Python or from a job is recorded alike: its config, plugins with versions,
data sizes, loss curve, eval scores, duration, output folder and final status. A Trainer
callback writes the loss curve and progress (step/total, ETA, tokens/s) as the run goes, and,
inside a job, reports them to the job, which may stop the run at its next step (a cancel).

The record is a by-product: a database that cannot be reached or written costs one warning, never
the training run (whose outputs hold the same facts in ``metrics.json`` and ``factory_run.json``).
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

from factory.errors import FactoryError
from factory.store import reporting

log = logging.getLogger(__name__)

CURVE_KEYS = ("loss", "eval_loss", "learning_rate", "epoch")
KEPT_METRICS = (
    "train_loss",
    "train_runtime",
    "train_samples_per_second",
    "total_flos",
    "num_input_tokens_seen",
    "trainable_parameters",
    "total_parameters",
    "epoch",
)


class TrainingRecord:
    """One run's row in the database (or nothing but a warning when the database is out of reach)."""

    def __init__(self, cfg: Any, manager: Any) -> None:
        from factory import __version__
        from factory.extras import hint, missing

        self.reporter = reporting.current.get()
        self.curve: list[dict[str, Any]] = []
        self.progress: dict[str, Any] = {}
        self.runs: Any = None
        self.run_id: int | None = None
        if missing("store"):
            log.warning(
                "this training run is not recorded in the results database (no database support "
                "installed: %s); its outputs hold its record",
                hint("store"),
            )
            return
        from factory.store.training import TrainingRuns

        try:
            self.runs = TrainingRuns(cfg.results_db, timeout=cfg.results_db_timeout)
            plugins = {r.name: {"distribution": r.distribution, "version": r.version} for r in manager.records.values()}
            self.run_id = self.runs.start(
                stage=cfg.stage,
                method=cfg.method,
                model=cfg.model,
                adapter=cfg.adapter,
                datasets=cfg.datasets,
                config=cfg.to_dict(),
                plugins=plugins,
                host=socket.gethostname(),
                factory_version=__version__,
                job_id=self.reporter.job_id if self.reporter else None,
            )
        except FactoryError as exc:
            self._lost(exc)
        if self.reporter is not None and self.run_id is not None:
            self.reporter.link_run("train", self.run_id)

    def _lost(self, exc: Exception) -> None:
        log.warning("this training run is not recorded in the results database (%s); its outputs hold its record", exc)
        self.runs = None

    def _write(self, method: str, **values: Any) -> None:
        if self.runs is None or self.run_id is None:
            return
        try:
            getattr(self.runs, method)(self.run_id, **values)
        except FactoryError as exc:
            self._lost(exc)

    def callback(self, setup: Any) -> Any:
        from transformers import TrainerCallback

        record = self
        output_dir = str(Path(setup.output_dir).resolve())
        self._write("update", output_dir=output_dir)

        class RecordTraining(TrainerCallback):
            """Loss curve and progress into the database (and the job), as the run goes."""

            def __init__(self) -> None:
                self.started = time.monotonic()
                self.first_step: tuple[float, int] | None = None  # resumed runs start mid-way

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                now = time.monotonic()
                if self.first_step is None:
                    self.first_step = (now, state.global_step - 1)
                since, base = self.first_step
                steps = state.global_step - base
                rate = steps / max(now - since, 1e-9)
                progress = {
                    "step": state.global_step,
                    "total": state.max_steps,
                    "eta_s": (state.max_steps - state.global_step) / rate if rate > 0 else None,
                    "tokens_per_s": (state.num_input_tokens_seen or 0) / max(now - self.started, 1e-9),
                }
                record.progress = progress
                if record.reporter is not None:  # raises JobStopped when the job was cancelled
                    loss = next((point["loss"] for point in reversed(record.curve) if "loss" in point), None)
                    record.reporter.progress(
                        state.global_step,
                        state.max_steps,
                        unit="steps",
                        tokens_per_s=progress["tokens_per_s"],
                        loss=loss,
                    )

            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
            ) -> None:
                point = {key: logs[key] for key in CURVE_KEYS if logs and key in logs}
                if "loss" in point or "eval_loss" in point:
                    record.curve.append({"step": state.global_step, **point})
                    record._write("update", loss_curve=list(record.curve), progress=dict(record.progress))
                    if record.reporter is not None and "loss" in point:
                        record.reporter.log(f"step {state.global_step}/{state.max_steps} loss {point['loss']:.4f}")

        return RecordTraining()

    def finish(self, metrics: dict[str, Any], output_dir: Path) -> None:
        history = metrics.get("log_history") or []
        curve = [
            {"step": entry["step"], **{key: entry[key] for key in CURVE_KEYS if key in entry}}
            for entry in history
            if "loss" in entry or "eval_loss" in entry
        ] or self.curve
        kept = {key: metrics[key] for key in KEPT_METRICS if key in metrics}
        losses = [point["loss"] for point in curve if "loss" in point]
        if losses:
            kept["last_loss"] = losses[-1]
        self._write(
            "finish",
            status="succeeded",
            loss_curve=curve,
            metrics=kept,
            output_dir=str(Path(output_dir).resolve()),
            eval_scores={key: value for key, value in metrics.items() if key.startswith("eval_")},
            data=metrics.get("data") if isinstance(metrics.get("data"), dict) else {},
        )

    def fail(self, exc: BaseException) -> None:
        cancelled = isinstance(exc, reporting.JobStopped) and exc.cancelled
        if isinstance(exc, FactoryError):
            reason = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            reason = "interrupted"
        else:
            reason = f"{exc.__class__.__name__}: {exc}"
        self._write(
            "finish",
            status="cancelled" if cancelled else "failed",
            error=reason,
            loss_curve=list(self.curve),
            progress=dict(self.progress),
        )
