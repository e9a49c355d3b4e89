"""Sharded data-parallel training through accelerate: DeepSpeed ZeRO presets and FSDP2 settings.

``deepspeed: zero2`` / ``zero3`` name a DeepSpeed config factory writes (every batch, clipping and
precision value left ``auto`` for the Trainer to fill from the run's own settings, so the two can
never disagree); ``deepspeed: FILE.json`` is the user's own. ``fsdp`` is the Trainer's FSDP string
(``full_shard auto_wrap``...), run as FSDP2 (``fully_shard``), wrapping the model's decoder layers.

What this CPU-only stack allows, tried with torch 2.13, accelerate 1.16, DeepSpeed 0.19
(docs/distributed.md): DeepSpeed ZeRO-2 and ZeRO-3 run on CPU under torchrun (gloo for the
Trainer, DeepSpeed's shared-memory collectives, JIT-compiled on first use). FSDP does not:
accelerate turns its FSDP plugin on only for accelerator devices, and on CPU drops it and runs
plain DDP without a word, so ``fsdp`` is refused where there is no CUDA GPU.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factory.config import RunConfig
from factory.errors import ConfigError

_AUTO = {
    "train_micro_batch_size_per_gpu": "auto",
    "train_batch_size": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
}

DEEPSPEED_PRESETS: dict[str, dict[str, Any]] = {
    "zero2": {
        **_AUTO,
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "allgather_bucket_size": 5e8,
        },
    },
    "zero3": {
        **_AUTO,
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        },
    },
}


def deepspeed_config(value: str) -> dict[str, Any]:
    """The DeepSpeed config ``deepspeed=value`` stands for: a preset, or the JSON file it names."""
    if value in DEEPSPEED_PRESETS:
        return json.loads(json.dumps(DEEPSPEED_PRESETS[value]))  # a fresh copy: the Trainer fills it in place
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"deepspeed config '{value}' does not exist; give the path of a DeepSpeed JSON file, or a preset "
            f"({', '.join(DEEPSPEED_PRESETS)})"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"deepspeed config '{value}' is not valid JSON ({exc}); fix the file") from None
    if not isinstance(config, dict):
        raise ConfigError(f"deepspeed config '{value}' must hold a JSON object, not {type(config).__name__}")
    return config


def check_distributed(cfg: RunConfig) -> None:
    """Refuse, before anything loads, a DeepSpeed or FSDP setting that cannot run here."""
    from factory import hardware

    if cfg.deepspeed and cfg.fsdp:
        raise ConfigError(f"deepspeed={cfg.deepspeed} and fsdp={cfg.fsdp!r} both shard the model; choose one")
    if cfg.deepspeed:
        deepspeed_config(cfg.deepspeed)
        if importlib.util.find_spec("deepspeed") is None:
            raise ConfigError(
                f"deepspeed={cfg.deepspeed} needs the package 'deepspeed', which is not installed; "
                "pip install 'factory-core[deepspeed]'"
            )
    if cfg.fsdp and not hardware.cuda_devices():
        raise ConfigError(
            f"fsdp={cfg.fsdp!r} needs CUDA GPUs: on CPU accelerate runs plain DDP instead, without sharding; "
            "use deepspeed=zero3 to shard on CPU, or run on GPUs"
        )


def trainer_settings(cfg: RunConfig) -> dict[str, Any]:
    """The TrainingArguments fields for the config's DeepSpeed or FSDP setting."""
    if cfg.deepspeed:
        return {"deepspeed": deepspeed_config(cfg.deepspeed)}
    if cfg.fsdp:
        # FSDP2 (torch's fully_shard); auto_wrap wraps the layers the model lists as not to split.
        return {"fsdp": cfg.fsdp, "fsdp_config": {"version": 2}}
    return {}


def weights_sharded(trainer: Any) -> bool:
    """Whether each rank holds only its partition of every weight (DeepSpeed ZeRO-3)."""
    plugin = (
        getattr(trainer.accelerator.state, "deepspeed_plugin", None)
        if getattr(trainer, "is_deepspeed_enabled", False)
        else None
    )
    return plugin is not None and plugin.zero_stage == 3


@contextmanager
def gathered_weights(trainer: Any) -> Iterator[None]:
    """Whole weights on every rank for the duration (a collective: every rank enters), so rank 0 can save them.

    Under ZeRO-3 a rank's parameters are empty outside the forward and backward passes; saving
    them as they are writes a model of zero-size tensors without an error.
    """
    if not weights_sharded(trainer):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(trainer.model.parameters()), modifier_rank=None):
        yield
