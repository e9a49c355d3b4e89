"""Where first-party implementations live, for "install X" hints.

When a run asks for ``method: lora`` and no installed plugin registers it, the user needs to
know which distribution to install. Installed plugins are discovered, never listed here; this
table only names the first-party distributions that provide a name or a config section.
"""

from __future__ import annotations

# (kind, name) -> distribution; kind "sections" names config sections.
FIRST_PARTY: dict[tuple[str, str], str] = {}


def _add(distribution: str, **names: list[str]) -> None:
    for kind, items in names.items():
        for name in items:
            FIRST_PARTY[(kind, name)] = distribution


_add("factory-plugin-peft", adapters=["lora", "dora", "rslora", "pissa", "loraplus", "oft"], sections=["lora", "oft"])
_add("factory-plugin-llama-pro", adapters=["llama-pro"], sections=["llama_pro"])
_add("factory-plugin-galore", optimizers=["galore", "galore-8bit", "galore-layerwise"], sections=["galore"])
_add("factory-plugin-adam-mini", optimizers=["adam-mini"], sections=["adam_mini"])
_add("factory-plugin-muon", optimizers=["muon"], sections=["muon"])
_add("factory-plugin-apollo", optimizers=["apollo", "apollo-mini", "apollo-layerwise"], sections=["apollo"])
_add("factory-plugin-badam", optimizers=["badam"], sections=["badam"])
_add("factory-plugin-bitsandbytes", quantizers=["bnb-4bit", "bnb-8bit"], sections=["bnb"])
_add("factory-plugin-gptq", quantizers=["gptq"], sections=["gptq"])
_add("factory-plugin-awq", quantizers=["awq"])
_add("factory-plugin-aqlm", quantizers=["aqlm"])
_add("factory-plugin-s2attn", patches=["s2attn"], sections=["s2attn"])
_add("factory-plugin-flash-attn", patches=["flash-attn", "flash-attn3"], sections=["flash_attn"])
_add("factory-plugin-rope", patches=["rope-scaling"], sections=["rope_scaling"])
_add("factory-plugin-liger", patches=["liger"], sections=["liger"])
_add(
    "factory-plugin-trl",
    stages=["rm", "dpo", "kto", "orpo", "simpo", "ppo"],
    sections=["rm", "dpo", "kto", "orpo", "simpo", "ppo"],
)
_add("factory-plugin-neftune", callbacks=["neftune"], sections=["neftune"])
_add("factory-plugin-vllm", engines=["vllm"], sections=["vllm"])


def provider_of(kind: str, name: str) -> str | None:
    """The first-party distribution that provides ``name`` of ``kind``, if any."""
    return FIRST_PARTY.get((kind, name))
