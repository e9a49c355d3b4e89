"""Finding a model's modules by name, shared by the methods that target modules (LoRA, GaLore...).

Plugins let users name target modules the way peft does: a leaf name (``q_proj``) or a dotted
suffix (``self_attn.q_proj``) matches every module whose qualified name ends with it, and
``all`` means every linear layer except the output head. Checking the names here, against the
loaded model, turns a typo into one sentence instead of a backend's traceback.

Plugins' options models use :data:`TargetModules` at registration time, so this module imports
torch only inside the functions that inspect a model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator

from factory.errors import ConfigError


def _split_names(value: object) -> object:
    """Accept ``KEY=q_proj,v_proj`` from the command line as well as a YAML list; refuse an empty list."""
    if isinstance(value, str) and value != "all":
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ValueError("give 'all' or a non-empty list of module names")
        if "all" in value:
            return "all"
    return value


TargetModules = Annotated[Literal["all"] | list[str], BeforeValidator(_split_names)]
"""An option naming target modules: ``all`` or module names (a list, or a comma-separated string)."""


# Quantized linear layers that are not torch.nn.Linear subclasses, as (top-level package, base class
# name): matched by name along the class's MRO so that no quantization backend is imported here.
QUANTIZED_LINEAR_BASES: frozenset[tuple[str, str]] = frozenset(
    {
        ("gptqmodel", "BaseQuantLinear"),  # GPTQ and AWQ layers of gptqmodel (what transformers loads them with)
        ("aqlm", "QuantizedLinear"),  # AQLM additive-quantization layers
    }
)


def is_quantized_linear(module: Any) -> bool:
    """A known quantized linear layer that does not subclass ``torch.nn.Linear`` (GPTQ, AWQ, AQLM)."""
    return any(
        (cls.__module__.partition(".")[0], cls.__name__) in QUANTIZED_LINEAR_BASES for cls in type(module).__mro__
    )


def is_linear(module: Any) -> bool:
    """A linear layer: ``torch.nn.Linear`` (and its quantized subclasses, e.g. bitsandbytes), GPT-2 style
    ``Conv1D``, or a known quantized linear layer of another kind (:func:`is_quantized_linear`)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (torch.nn.Linear, Conv1D)) or is_quantized_linear(module)


def matches(module_name: str, targets: Iterable[str]) -> bool:
    """Whether a qualified module name is selected by one of ``targets`` (exact or dotted suffix)."""
    return any(module_name == t or module_name.endswith("." + t) for t in targets)


def _output_head(model: Any) -> Any:
    get_head = getattr(model, "get_output_embeddings", None)
    return get_head() if callable(get_head) else None


def linear_module_names(model: Any, exclude_head: bool = True) -> list[str]:
    """Sorted leaf names of the model's linear layers (e.g. ``q_proj``), without the output head."""
    head = _output_head(model) if exclude_head else None
    return sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if is_linear(module) and module is not head}
    )


def resolve_targets(model: Any, target: str | list[str], key: str) -> list[str]:
    """Module names for a ``target`` option: ``"all"`` becomes every linear layer, a list is checked.

    ``key`` is the option's config key (``lora.target``), named in the error when the model has
    no module of a given name or no linear layer at all.
    """
    linear = linear_module_names(model)
    if target == "all":
        if not linear:
            raise ConfigError(
                f"{key}: all found no linear layers in {type(model).__name__} (quantized layers may not be "
                f"torch Linear modules); list the module names in {key} explicitly"
            )
        return linear
    names = [target] if isinstance(target, str) else list(target)
    check_modules(model, names, key, shown=linear, shown_label="linear modules")
    return names


def check_modules(
    model: Any, names: Iterable[str], key: str, *, shown: list[str] | None = None, shown_label: str = "modules"
) -> None:
    """Raise ConfigError naming every entry of ``names`` that matches no module of the model.

    The message lists ``shown`` (default: the leaf names of every module that holds weights) so
    the user can pick a valid name.
    """
    qualified = [name for name, _ in model.named_modules() if name]
    missing = [n for n in names if not any(matches(q, [n]) for q in qualified)]
    if not missing:
        return
    if shown is None:
        shown = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if name and next(module.parameters(recurse=False), None) is not None
            }
        )
    raise ConfigError(
        f"{key} names {', '.join(repr(n) for n in missing)}, which {type(model).__name__} does not have; "
        f"its {shown_label} are {', '.join(shown) or '(none)'}"
    )
