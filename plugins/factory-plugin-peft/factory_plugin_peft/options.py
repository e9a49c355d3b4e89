"""Options of the LoRA family (config section ``lora``), shared by every method of this plugin."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import TargetModules


class LoraOptions(BaseModel):
    """``lora.*``: the adapter's shape and where it goes; the method picks the variant."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, gt=0, description="rank r of the update B @ A")
    alpha: float | None = Field(None, gt=0, description="scaling numerator (alpha / r); default 2 * rank")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target: TargetModules = Field(
        "all", description="module names to adapt (q_proj, self_attn.v_proj...), or all linear layers but the head"
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="modules trained in full and saved with the adapter (e.g. embed_tokens)"
    )
    use_dora: bool = Field(False, description="weight-decomposed LoRA (method dora sets it)")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) (method rslora sets it)")
    pissa_niter: int = Field(
        4, ge=0, description="method pissa: fast SVD iterations for the init; 0 runs the exact (slow) SVD"
    )
    loraplus_lr_ratio: float = Field(16.0, gt=0, description="method loraplus: learning rate of B / that of A")
    loraplus_lr_embedding: float = Field(1e-6, gt=0, description="method loraplus: learning rate of LoRA embeddings")

    @property
    def scaling_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank
