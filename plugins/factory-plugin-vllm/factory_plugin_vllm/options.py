"""Settings of the vllm engine, read from the config section ``vllm`` (``vllm.gpu_memory_utilization=0.8``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class VLLMOptions(BaseModel):
    """vLLM's own knobs; the rest (model, precision, batch size, seed) comes from the core config."""

    model_config = ConfigDict(extra="forbid")

    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="share of GPU memory vLLM may take")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs to split the model across")
    max_model_len: int | None = Field(None, gt=0, description="context length (default: the model's)")
    enforce_eager: bool = Field(False, description="skip CUDA graphs (slower, starts faster, less memory)")
    max_lora_rank: int = Field(64, gt=0, description="largest LoRA rank the engine reserves room for")
