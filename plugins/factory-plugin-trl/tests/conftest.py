"""Shared helpers of the TRL plugin's tests: demo data and a short run of a stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import factory

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"
DATASETS = {"kto": "kto_en_demo", "ppo": "kto_en_demo"}  # ppo reads prompts from conversations; others: pairs


def stage_args(model: Any, stage: str, out: Path, **extra: Any) -> dict[str, Any]:
    """A short run of ``stage`` on the demo data (tiny defaults; tests override what they measure)."""
    args: dict[str, Any] = dict(
        model=str(model),
        stage=stage,
        dataset=DATASETS.get(stage, "dpo_en_demo"),
        dataset_dir=str(DEMO_DIR),
        max_samples=8,
        cutoff_len=64,
        batch_size=2,
        max_steps=2,
        learning_rate=5e-3,
        logging_steps=1,
        output_dir=str(out),
        precision="fp32",
        seed=3,
        lr_scheduler="constant",
    )
    args.update(extra)
    return args


def run(model: Any, stage: str, out: Path, **extra: Any) -> dict[str, Any]:
    return factory.finetune(**stage_args(model, stage, out, **extra))


def logged(metrics: dict[str, Any], key: str) -> list[float]:
    """The training-time values of ``key``, one per logging step (eval entries and the summary left out)."""
    return [entry[key] for entry in metrics["log_history"] if key in entry and "loss" in entry]
