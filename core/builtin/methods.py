"""Built-in fine-tuning methods (full, freeze) and the default optimizer (adamw)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from factory.hookspecs import hookimpl


class FreezeOptions(BaseModel):
    """Options of ``method: freeze`` (config section ``freeze``)."""

    model_config = ConfigDict(extra="forbid")

    layers: int = Field(2, description="train the last N decoder layers (negative: the first N)")
    modules: list[str] = Field(
        default_factory=lambda: ["all"],
        description="sub-modules of those layers to train (e.g. mlp, self_attn), or 'all'",
    )
    extra: list[str] = Field(
        default_factory=list, description="other modules to train as well (e.g. embed_tokens, lm_head)"
    )

    @model_validator(mode="after")
    def _something_trains(self) -> FreezeOptions:
        if self.layers == 0 and not self.extra:
            raise ValueError("freeze.layers is 0 and freeze.extra is empty, so nothing would train")
        return self


class AdamWOptions(BaseModel):
    """Options of ``optimizer: adamw`` (config section ``adamw``)."""

    model_config = ConfigDict(extra="forbid")

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    fused: bool | None = Field(
        None,
        description="torch's single-kernel AdamW; unset: on when every trainable parameter is a floating-point CPU or CUDA tensor",
    )


@hookimpl
def register_adapters(register):
    register("full", "factory.train.methods:FullTuning", description="train every parameter")
    register(
        "freeze",
        "factory.train.methods:FreezeTuning",
        options=FreezeOptions,
        description="train the last N layers and/or named modules, freeze the rest",
    )


@hookimpl
def register_optimizers(register):
    register(
        "adamw",
        "factory.train.optim:AdamW",
        options=AdamWOptions,
        description="torch.optim.AdamW over the adapter's parameter groups",
    )
