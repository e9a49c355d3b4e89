"""What the plugin's training tests share: a short QLoRA run of a tiny model on the LLaMA-Factory demo data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import factory

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"


@pytest.fixture
def tiny_qlora_run():
    """``run(model, output_dir, **overrides)``: ``factory.finetune`` of an NF4 LoRA on 8 alpaca rows; its metrics."""

    def run(model: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
        settings = {
            "model": str(model),
            "quantization": "bnb-4bit",
            "method": "lora",
            "dataset": "alpaca_en_demo",
            "dataset_dir": str(DEMO_DIR),
            "max_samples": 8,
            "cutoff_len": 96,
            "batch_size": 4,
            "learning_rate": 5e-2,
            "lr_scheduler": "constant",
            "logging_steps": 1,
            "output_dir": str(output_dir),
            "sample_prompt": None,
            "seed": 3,
        }
        return factory.finetune(**{**settings, **overrides})

    return run
