"""Helpers shared by the quantization plugins (bitsandbytes, GPTQ, AWQ, AQLM).

Every quantizer needs the same few decisions: which dtype the de-quantized matmuls run in,
how a quantized model is written out, and one sentence for the merge that cannot be done
(folding a LoRA into packed low-bit weights would either re-quantize it away or is not
supported by the backend at all). Keeping them here gives every backend the same wording.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from factory.config import RunConfig
from factory.errors import PluginError
from factory.model.modules import is_quantized_linear

if TYPE_CHECKING:
    from factory.model.fused import WeightSource

ComputeDtype = Literal["auto", "bf16", "fp16", "fp32"]
"""An option naming the compute dtype of a quantized layer; ``auto`` follows the run's precision."""


def compute_dtype(name: ComputeDtype, cfg: RunConfig) -> Any:
    """The torch dtype for a ``compute_dtype`` option (``auto``: the run's resolved precision)."""
    from factory.model.precision import resolve_precision, torch_dtype

    return torch_dtype(resolve_precision(cfg.precision) if name == "auto" else name)


def refuse_adapter_merge(cfg: RunConfig, backend: str, why: str) -> None:
    """Raise the one-sentence refusal to merge ``cfg.adapter`` into a ``backend``-quantized base."""
    if cfg.adapter:
        raise PluginError(
            f"cannot merge the adapter '{cfg.adapter}' into the {backend} model '{cfg.model}' because {why}; "
            f"export with model= the full-precision model and no quantization= to merge it there, or use the adapter as it is"
        )


def save_quantized(model: Any, tokenizer: Any, output_dir: str, cfg: RunConfig, backend: str, why: str) -> Path:
    """Write the quantized model (no adapter) as a Hugging Face folder that reloads already quantized."""
    refuse_adapter_merge(cfg, backend, why)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def checkpoint_quantization(cfg: RunConfig) -> str | None:
    """The ``quant_method`` recorded in the model's ``config.json`` (None for an unquantized model).

    Read from the file, without loading the model, so a quantizer can tell *load this quantized
    checkpoint* from *quantize this model* before the loader runs.
    """
    from factory.model.checkpoint import checkpoint_config

    return (checkpoint_config(cfg).get("quantization_config") or {}).get("quant_method")


def require_checkpoint(cfg: RunConfig, method: str, label: str, rest: str) -> None:
    """Refuse a model that is not a ``method`` checkpoint, saying what it is; ``rest`` ends the sentence with the fix."""
    found = checkpoint_quantization(cfg)
    if found != method:
        what = f"is quantized with {found}" if found else "is not quantized"
        raise PluginError(f"model '{cfg.model}' {what}, and quantization={method} only loads {label} checkpoints{rest}")


def require_quantized_layers(model: Any, cfg: RunConfig, label: str) -> None:
    """Refuse a loaded model in which no layer is quantized (its config named a method that did not apply)."""
    if not any(is_quantized_linear(m) for m in model.modules()):
        raise PluginError(f"model '{cfg.model}' loaded without {label} layers; check its quantization_config")


def calibration_texts(cfg: RunConfig, dataset: str | None, samples: int) -> list[str]:
    """Up to ``samples`` plain texts from a factory data set (default: the run's first one) for calibration.

    A record gives its ``text`` (pre-training data) or its system prompt and message contents,
    one per line: calibration only needs text shaped like the data the model will see.
    """
    from factory.data.worker import load_records

    name = dataset or cfg.datasets[0]
    records = load_records(name, cfg.model_copy(update={"max_samples": samples, "streaming": False}), cfg.manager())
    texts = []
    for record in records:
        parts = (
            [record["text"]]
            if record.get("text")
            else [record.get("system") or "", *(m["content"] for m in record["messages"])]
        )
        text = "\n".join(part for part in parts if part)
        if text.strip():
            texts.append(text)
    if not texts:
        raise PluginError(
            f"calibration data set '{name}' gave no text to calibrate on; name a data set with text or messages"
        )
    return texts


class _PinOnFirstForward:
    """A one-shot forward pre-hook: pin ``layer`` to its training kernel if ``model`` trains anything."""

    def __init__(self, model: Any, layer: Any) -> None:
        self.model = model
        self.handle = layer.register_forward_pre_hook(self)

    def __call__(self, layer: Any, _args: Any) -> None:
        self.handle.remove()
        if layer.linear_mode is None and any(p.requires_grad for p in self.model.parameters()):
            layer.linear_mode = "train"


def pin_training_kernels(model: Any) -> int:
    """Keep gptqmodel layers (GPTQ, AWQ) on their training kernel when the model is trained.

    A gptqmodel layer picks its kernel at its first forward, for good: run in eval mode without
    grad (an evaluation, a sample generation) it switches to a packed inference kernel whose
    gradients are wrong, so an adapter trained afterwards learns from a broken signal. A
    one-shot pre-hook on each such layer pins it to the training kernel when the model has
    trainable parameters at that moment (an adapter attached for training); a model loaded to
    serve keeps the fast kernel. Returns how many layers got the hook.
    """
    layers = [module for module in model.modules() if hasattr(module, "linear_mode")]
    for layer in layers:
        _PinOnFirstForward(model, layer)
    return len(layers)


def freeze_base(model: Any, *, pin_kernels: bool = False) -> Any:
    """Freeze every weight of a quantized model; the adapter then adds the only trainable ones.

    peft's ``prepare_model_for_kbit_training`` also casts every unquantized weight (embedding,
    output head, norms) to fp32. That doubles the largest tensors the quantizer left alone (57 MB
    more for SmolLM2-135M), and fp32 norm weights turn every later activation into fp32, so the
    whole network computes in fp32 on CPU. transformers' RMSNorm already normalises in fp32, the
    core keeps trainable adapter weights in fp32 and switches gradient checkpointing on itself,
    so freezing is all that is left to do: the one preparation every quantizer shares.
    ``pin_kernels`` also keeps gptqmodel layers (GPTQ, AWQ) on their training kernel
    (:func:`pin_training_kernels`).
    """
    if pin_kernels:
        pin_training_kernels(model)
    for param in model.parameters():
        param.requires_grad = False
    return model


# Instance attribute holding a quantized layer's dequantizer: a plain attribute, not a submodule or a
# buffer, so it never enters the state dict, the module tree or a saved checkpoint.
_DEQUANTIZER = "_factory_dequantizer"


def attach_dequantizer(module: Any, fn: WeightSource) -> None:
    """Declare how the quantized layer ``module`` gives its dense weight (called without arguments, in ``fn.dtype``).

    The quantizer knows its layers' format, the adapter plugin knows its matmuls: with this an
    adapter runs the base product itself through the core's low-rank linear (QLoRA), dequantizing
    inside each pass, without knowing which backend quantized the layer.
    """
    setattr(module, _DEQUANTIZER, fn)


def dequantizer_of(module: Any) -> WeightSource | None:
    """The dequantizer a quantizer attached to ``module`` (:func:`attach_dequantizer`), or None."""
    return getattr(module, _DEQUANTIZER, None)
