"""Built-in training callbacks (``callbacks: [NAME]``), registered like any plugin's."""

from __future__ import annotations

import math
from typing import Any

from factory.config import RunConfig
from factory.errors import FactoryError


class StopOnNonFinite:
    """``stop-on-nan``: end a run whose logged loss is NaN or infinite, in one sentence, instead of training on.

    A diverged run otherwise keeps stepping on garbage and saves garbage; the checkpoints before
    the divergence stay where they are (``resume=true`` with a lower learning rate continues).
    """

    def create(self, cfg: RunConfig) -> Any:
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_log(
                self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
            ) -> None:
                for key in ("loss", "eval_loss"):
                    value = (logs or {}).get(key)
                    if isinstance(value, float) and not math.isfinite(value):
                        raise FactoryError(
                            f"the {key.replace('_', ' ')} became {value} at step {state.global_step}; lower learning_rate "
                            f"(now {cfg.learning_rate}) or max_grad_norm, or check the data"
                        )

        return _Stop()


STOP_ON_NON_FINITE = StopOnNonFinite()
