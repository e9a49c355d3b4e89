"""Options of the BAdam optimizer (config section ``badam``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class BadamOptions(BaseModel):
    """``badam.*``: the order and pace in which blocks (decoder layers) take turns training."""

    model_config = ConfigDict(extra="forbid")

    switch_mode: Literal["ascending", "descending", "random", "fixed"] = Field(
        "ascending", description="order of the blocks; fixed trains start_block only"
    )
    switch_every: int = Field(50, gt=0, description="optimizer steps before the next block takes over")
    start_block: int | None = Field(None, ge=0, description="index of the first block (default: by switch_mode)")
    include_embedding: bool = Field(False, description="make the input embeddings a block of their own")
    include_lm_head: bool = Field(False, description="make the output head and the other non-layer weights a block")
    verbose: int = Field(0, ge=0, le=2, description="0 quiet, 1 print each switch, 2 also the trained names")

    @model_validator(mode="after")
    def _start_block_fits_mode(self) -> BadamOptions:
        if self.switch_mode == "fixed" and self.start_block is None:
            raise ValueError("badam.switch_mode fixed trains one block only, so give it as badam.start_block")
        if self.switch_mode == "random" and self.start_block is not None:
            raise ValueError("badam.switch_mode random draws the blocks itself; drop badam.start_block")
        return self
