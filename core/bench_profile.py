"""Where a benchmarked training run spends its time: data, forward, backward, clipping, optimizer.

Timing hooks on the trainer a stage built (any Trainer subclass: factory's, TRL's), so the
figures are those of the run itself, not of a separate profiling pass. The forward is the
trainer's ``compute_loss``; inside it, a preference trainer's policy and reference
log-probability passes are timed too where the trainer has them as methods, so a stage whose
reference forward dominates shows it. Totals are taken at the end of each training step:
evaluation after the last step does not count.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

# The parts of a step, each the wall time of one hook; "other" is what the clock saw outside them
# (the scheduler, zero_grad, logging, callbacks, Python between the parts).
PARTS = ("data", "forward", "backward", "grad_clip", "optimizer")

# Methods of preference trainers (TRL's, the trl plugin's) called inside ``compute_loss``; each one
# the trainer has is timed as a sub-part of the forward.
FORWARD_PARTS = {
    "concatenated_forward": "policy_logprobs",
    "compute_ref_log_probs": "reference_logprobs",
    "reference_log_probs": "reference_logprobs",
    "forward_and_logprobs": "policy_logprobs",
    "compute_reference_log_probs": "reference_logprobs",
    "logps": "policy_logprobs",
}


class StepProfile:
    """Wall time per part of the training steps of one trainer, plus the tokens its training batches hold."""

    def __init__(self) -> None:
        self._running: dict[str, float] = defaultdict(float)
        self._depth: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = {}
        self.real_tokens = 0
        self.computed_tokens = 0
        self._real = 0
        self._computed = 0

    def _timed(self, part: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth[part] += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[part] -= 1
                if not self._depth[part]:  # a part that calls itself is counted once
                    self._running[part] += time.perf_counter() - start

        return timed

    def _collate(self, collator: Callable[[list[dict[str, Any]]], Any]) -> Callable[[list[dict[str, Any]]], Any]:
        timed = self._timed("data", collator)

        def collate(features: list[dict[str, Any]]) -> Any:
            batch = timed(features)
            self._real += sum(
                len(value)
                for feature in features
                for key, value in feature.items()
                if key.endswith("input_ids") and isinstance(value, (list, tuple))
            )
            self._computed += sum(
                int(value.numel())
                for key, value in batch.items()
                if key.endswith("input_ids") and hasattr(value, "numel")
            )
            return batch

        return collate

    def attach(self, trainer: Any) -> None:
        """Wrap ``trainer``'s collator, loss, backward, clipping and optimizer step (instance attributes only)."""
        from transformers import TrainerCallback

        if trainer.data_collator is not None:
            trainer.data_collator = self._collate(trainer.data_collator)
        trainer.compute_loss = self._timed("forward", trainer.compute_loss)
        trainer.accelerator.backward = self._timed("backward", trainer.accelerator.backward)
        trainer._clip_grad_norm = self._timed("grad_clip", trainer._clip_grad_norm)
        for method, part in FORWARD_PARTS.items():
            if callable(getattr(trainer, method, None)):
                setattr(trainer, method, self._timed(part, getattr(trainer, method)))
        profile = self

        class OptimizerClock(TrainerCallback):
            """The optimizer step sits between these two events of the Trainer's loop."""

            def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                profile._opt_start = time.perf_counter()

            def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                profile._running["optimizer"] += time.perf_counter() - profile._opt_start

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                profile.step_end()

        trainer.add_callback(OptimizerClock())

    def step_end(self) -> None:
        """Keep the totals so far: what runs after the last training step (evaluation) is not counted."""
        self.seconds = dict(self._running)
        self.real_tokens, self.computed_tokens = self._real, self._computed

    def report(self, train_seconds: float, reference: float = 0.0) -> dict[str, Any]:
        """Seconds and share of ``train_seconds`` per part, the largest part named as ``dominant``.

        ``reference``: seconds of a reference pass the stage ran before its first step (part of ``train_seconds``).
        """
        parts = {part: self.seconds.get(part, 0.0) for part in PARTS}
        if reference:
            parts["reference_before_steps"] = reference
        parts["other"] = max(train_seconds - sum(parts.values()), 0.0)
        inner = {part: self.seconds[part] for part in sorted(set(FORWARD_PARTS.values())) if part in self.seconds}
        share = lambda seconds: round(seconds / train_seconds, 4) if train_seconds else 0.0  # noqa: E731
        return {
            "how": "wall time of timing hooks on the run's own trainer: collator (data), compute_loss (forward), "
            "accelerator.backward, gradient clipping, optimizer.step; shares of the training time",
            "seconds": {part: round(seconds, 3) for part, seconds in parts.items()},
            "share": {part: share(seconds) for part, seconds in parts.items()},
            "forward_parts": {
                part: {"seconds": round(seconds, 3), "share": share(seconds)} for part, seconds in inner.items()
            },
            "dominant": max(parts, key=parts.__getitem__),
        }
