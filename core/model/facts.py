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
    # What the patch takes over, so nothing else replaces it after: "rms_norm", "mlp" (the core's
    # fused forwards step aside), "loss" (the trainer computes the loss through the model's forward
    # instead of its chunked loss), "rope", "attention". Two patches may not take over the same thing.
    replaces: tuple[str, ...] | None = None
    decided_by: tuple[tuple[str, str], ...] = ()  # (fact, patch) for messages
    owner_of: tuple[tuple[str, str], ...] = ()  # (what is replaced, patch)

    def combine(self, other: ModelFacts | None, patch: str) -> ModelFacts:
        """These facts with ``other``'s added; a patch contradicting an earlier one is refused in one sentence."""
        if other is None:
            return self
        if not isinstance(other, ModelFacts):
            raise PluginError(f"patch '{patch}' returned {other!r} from before_load; return a ModelFacts or None")
        merged, decided = self, dict(self.decided_by)
        owners = dict(self.owners)
        for thing in other.replaces or ():
            if thing in owners:
                raise PluginError(
                    f"patches '{owners[thing]}' and '{patch}' both replace {thing}; use one of them (or turn that "
                    f"kernel off in one patch's options)"
                )
            owners[thing] = patch
        for field in fields(ModelFacts):
            if field.name in ("decided_by", "replaces", "owner_of") or getattr(other, field.name) is None:
                continue
            ours, theirs = getattr(self, field.name), getattr(other, field.name)
            if ours is not None and ours != theirs:
                raise PluginError(
                    f"patches '{decided[field.name]}' and '{patch}' disagree on {field.name} ({ours!r} against {theirs!r}); "
                    "use one of them"
                )
            merged = replace(merged, **{field.name: theirs})
            decided[field.name] = patch
        return replace(
            merged, decided_by=tuple(decided.items()), replaces=tuple(owners) or None, owner_of=tuple(owners.items())
        )

    @property
    def owners(self) -> dict[str, str]:
        """What each patch took over -> the patch."""
        return dict(self.owner_of)
