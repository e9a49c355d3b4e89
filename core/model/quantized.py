"""Helpers shared by the quantization plugins (bitsandbytes, GPTQ, AWQ, AQLM).

Every quantizer needs the same few decisions: which dtype the de-quantized matmuls run in,
how a quantized model is written out, and one sentence for the merge that cannot be done
(folding a LoRA into packed low-bit weights would either re-quantize it away or is not
supported by the backend at all). Keeping them here gives every backend the same wording.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from factory.config import RunConfig
from factory.errors import PluginError

ComputeDtype = Literal["auto", "bf16", "fp16", "fp32"]
"""An option naming the compute dtype of a quantized layer; ``auto`` follows the run's precision."""


def compute_dtype(name: ComputeDtype, cfg: RunConfig) -> Any:
    """The torch dtype for a ``compute_dtype`` option (``auto``: the run's resolved precision)."""
    from factory.model.loader import resolve_precision, torch_dtype

    return torch_dtype(resolve_precision(cfg.precision) if name == "auto" else name)


def refuse_adapter_merge(cfg: RunConfig, backend: str, why: str) -> None:
    """Raise the one-sentence refusal to merge ``cfg.adapter`` into a ``backend``-quantized base."""
    if cfg.adapter:
        raise PluginError(
            f"cannot merge the adapter '{cfg.adapter}' into the {backend} model '{cfg.model}' because {why}; "
            f"export without quantization= to merge it into the full-precision base, or use the adapter as it is"
        )


def save_quantized(model: Any, tokenizer: Any, output_dir: str, cfg: RunConfig, backend: str, why: str) -> Path:
    """Write the quantized model (no adapter) as a Hugging Face folder that reloads already quantized."""
    refuse_adapter_merge(cfg, backend, why)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out

