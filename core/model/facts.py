"""What plugins decide at load time, handed forward by the pipeline instead of written into the config.

The config is the user's and is read-only once validated. A patch that changes how batches must
be built (FlashAttention's varlen calls want one padding-free row; S2-Attn groups each padded
row) returns a :class:`ModelFacts` from ``before_load``; the loader combines the decisions of
every patch, refusing two that disagree, and the training run builds its batches from them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from factory.errors import PluginError


@dataclass(frozen=True)
class ModelFacts:
    """Decisions about the loaded model; ``None`` means no opinion (the config decides)."""

    attn_implementation: str | None = None  # the attention the model was loaded with
    padding_free: bool | None = None  # batches as one row of restarting positions (True) or padded rows (False)
    decided_by: tuple[tuple[str, str], ...] = ()  # (fact, patch) for messages

    def combine(self, other: ModelFacts | None, patch: str) -> ModelFacts:
        """These facts with ``other``'s added; a patch contradicting an earlier one is refused in one sentence."""
        if other is None:
            return self
        if not isinstance(other, ModelFacts):
            raise PluginError(f"patch '{patch}' returned {other!r} from before_load; return a ModelFacts or None")
        merged, decided = self, dict(self.decided_by)
        for field in fields(ModelFacts):
            if field.name == "decided_by" or getattr(other, field.name) is None:
                continue
            ours, theirs = getattr(self, field.name), getattr(other, field.name)
            if ours is not None and ours != theirs:
                raise PluginError(
                    f"patches '{decided[field.name]}' and '{patch}' disagree on {field.name} ({ours!r} against {theirs!r}); "
                    "use one of them"
                )
            merged = replace(merged, **{field.name: theirs})
            decided[field.name] = patch
        return replace(merged, decided_by=tuple(decided.items()))
