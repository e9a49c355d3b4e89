"""Options of the BAdam optimizer (config section ``badam``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BadamOptions(BaseModel):
    """``badam.*``: the order and pace in which blocks (decoder layers, or fractions of every weight) take turns."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["layer", "ratio"] = Field(
        "layer", description="layer: one decoder layer at a time; ratio: a fraction of every weight at a time"
    )
    update_ratio: float = Field(
        0.05, gt=0, le=1, description="ratio mode: fraction of each weight's entries updated per phase"
    )
    mask_mode: Literal["adjacent", "scatter"] = Field(
        "adjacent", description="ratio mode: the entries as one run of adjacent ones, or scattered at random"
    )
    switch_mode: Literal["ascending", "descending", "random", "fixed"] = Field(
        "ascending", description="order of the blocks; fixed trains start_block only"
    )
    switch_every: int = Field(50, gt=0, description="optimizer steps before the next block (or fraction) takes over")
    start_block: int | None = Field(None, ge=0, description="index of the first block (default: by switch_mode)")
    include_embedding: bool = Field(False, description="make the input embeddings a block of their own")
    include_lm_head: bool = Field(False, description="make the output head and the other non-layer weights a block")
    verbose: int = Field(0, ge=0, le=2, description="0 quiet, 1 print each switch, 2 also the trained names")

    @model_validator(mode="after")
    def _start_block_fits_mode(self) -> BadamOptions:
        # compared with the defaults (not "was it given"), so a saved config reloads
        defaults = type(self).model_fields
        if self.mode == "ratio" and (
            self.switch_mode != defaults["switch_mode"].default or self.start_block is not None
        ):
            raise ValueError(
                "badam.mode ratio updates part of every weight instead of layers in turn; drop badam.switch_mode and badam.start_block"
            )
        if self.mode == "layer" and (self.update_ratio, self.mask_mode) != (
            defaults["update_ratio"].default,
            defaults["mask_mode"].default,
        ):
            raise ValueError(
                "badam.update_ratio and badam.mask_mode belong to badam.mode ratio; set badam.mode=ratio or drop them"
            )
        if self.switch_mode == "fixed" and self.start_block is None:
            raise ValueError("badam.switch_mode fixed trains one block only, so give it as badam.start_block")
        if self.switch_mode == "random" and self.start_block is not None:
            raise ValueError("badam.switch_mode random draws the blocks itself; drop badam.start_block")
        return self
