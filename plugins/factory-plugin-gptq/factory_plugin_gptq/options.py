"""Options of the GPTQ quantizer (config section ``gptq``); they apply when quantizing, a checkpoint keeps its own."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class GptqOptions(BaseModel):
    """``gptq.*``: bit width, grouping and activation order, and the calibration data."""

    model_config = ConfigDict(extra="forbid")

    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per weight")
    group_size: int = Field(128, description="columns sharing one scale and zero point; -1: one group per row")
    desc_act: bool = Field(False, description="quantize columns in order of decreasing activation (act-order)")
    sym: bool = Field(True, description="symmetric quantization (no zero-point offset)")
    damp_percent: float = Field(0.1, gt=0, lt=1, description="dampening added to the Hessian diagonal")
    calibration_dataset: str | None = Field(
        None, description="factory data set (name or path) to calibrate on; default: the run's first data set"
    )
    calibration_samples: int = Field(128, gt=0, description="records of the calibration data set to use")

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError("give a positive number of columns, or -1 for one group per row")
        return value
