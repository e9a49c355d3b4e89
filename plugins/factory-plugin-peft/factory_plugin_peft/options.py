"""Options of the LoRA family (config section ``lora``), shared by every method of this plugin."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class OftOptions(BaseModel):
    """``oft.*``: the rotation's blocks and where it goes (method ``oft``)."""

    model_config = ConfigDict(extra="forbid")

    block_size: int = Field(
        32, ge=0, description="size of each orthogonal block (must divide the target layers' inputs)"
    )
    rank: int = Field(0, ge=0, description="number of blocks per layer instead of block_size (0: use block_size)")
    dropout: float = Field(0.0, ge=0, lt=1, description="probability of setting a block to identity while training")
    target: TargetModules = Field(
        "all", description="module names to adapt (q_proj, self_attn.v_proj...), or all linear layers but the head"
    )
    modules_to_save: list[str] = Field(
        default_factory=list, description="modules trained in full and saved with the adapter"
    )
    coft: bool = Field(False, description="constrained OFT: keep each rotation within eps of the identity")
    eps: float = Field(6e-5, gt=0, description="coft: how far a rotation may move")
    block_share: bool = Field(False, description="one rotation shared by all blocks of a layer")
    cayley_neumann: bool = Field(True, description="approximate the Cayley transform with a Neumann series (faster)")
    neumann_terms: int = Field(5, gt=0, description="terms of that series")

    @model_validator(mode="after")
    def _blocks_given(self) -> OftOptions:
        if self.rank == 0 and self.block_size == 0:
            raise ValueError(
                "oft.block_size and oft.rank are both 0; give the block size (e.g. 32) or the number of blocks"
            )
        return self
