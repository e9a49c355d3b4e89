"""Training settings that only fail deep inside the Trainer, checked before any model loads.

An unknown scheduler, a missing DeepSpeed file or an uninstalled reporting backend would
otherwise surface as a library traceback after the model and data are loaded; here each is one
sentence naming the value and the fix. The valid values come from transformers itself, so the
lists never drift from the installed version.
"""

from __future__ import annotations

from factory.config import RunConfig
from factory.errors import ConfigError, did_you_mean, one_of

# Reporting integrations whose pip name differs from their report_to name.
_PIP_NAMES = {"azure_ml": "azureml-core", "comet_ml": "comet-ml", "flyte": "flytekit"}


def check_training(cfg: RunConfig) -> None:
    """Refuse a training config that the Trainer would refuse later, in one sentence."""
    from factory.train.distributed import check_distributed

    _check_scheduler(cfg.lr_scheduler)
    check_distributed(cfg)
    _check_report_to(cfg.report_to)
    if not cfg.shuffle:
        check_sequential_order()


def _check_scheduler(name: str) -> None:
    from transformers.trainer_utils import SchedulerType

    valid = [kind.value for kind in SchedulerType]
    if name not in valid:
        raise ConfigError(
            f"lr_scheduler '{name}' is not a scheduler transformers knows{did_you_mean(name, valid)} (available: {one_of(valid)})"
        )


def check_sequential_order() -> None:
    """``shuffle: false`` is the Trainer's ``train_sampling_strategy="sequential"``, which transformers 5.2 added."""
    import dataclasses

    import transformers

    if "train_sampling_strategy" not in {field.name for field in dataclasses.fields(transformers.TrainingArguments)}:
        raise ConfigError(
            f"shuffle: false needs transformers 5.2 or newer (its train_sampling_strategy), and {transformers.__version__} "
            "is installed; pip install -U 'transformers>=5.2' or drop shuffle: false"
        )


def _check_report_to(backends: list[str]) -> None:
    from transformers.integrations.integration_utils import (
        INTEGRATION_TO_CALLBACK,
        get_available_reporting_integrations,
    )

    available = set(get_available_reporting_integrations())
    for name in backends:
        if name in ("none", "all"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise ConfigError(
                f"report_to '{name}' is not a reporting backend{did_you_mean(name, INTEGRATION_TO_CALLBACK)} "
                f"(available: {one_of(INTEGRATION_TO_CALLBACK)}, none)"
            )
        if name not in available:
            package = _PIP_NAMES.get(name, name)
            raise ConfigError(
                f"report_to '{name}' needs the package '{package}', which is not installed; pip install {package}"
            )
