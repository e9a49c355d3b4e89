"""Options of the bitsandbytes quantizers (config section ``bnb``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from factory.plugin_api import ComputeDtype


class BnbOptions(BaseModel):
    """``bnb.*``: the 4-bit data type and its statistics, the compute dtype, the 8-bit outlier threshold."""

    model_config = ConfigDict(extra="forbid")

    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="bnb-4bit: NormalFloat4 (QLoRA's choice) or plain FP4")
    double_quant: bool = Field(True, description="bnb-4bit: quantize the per-block scales too (~0.4 bit/weight less)")
    compute_dtype: ComputeDtype = Field(
        "auto", description="dtype the de-quantized matmuls run in; auto follows precision"
    )
    int8_threshold: float = Field(
        6.0, ge=0, description="bnb-8bit: activations above this stay in 16-bit (LLM.int8 outliers)"
    )
