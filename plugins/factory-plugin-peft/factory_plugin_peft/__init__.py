"""factory-plugin-peft: the LoRA family of fine-tuning methods, through peft.

Registers the adapters ``lora``, ``dora``, ``rslora``, ``pissa`` and ``loraplus``, all reading
the config section ``lora``, and ``oft`` (section ``oft``). This module is imported when plugins are listed, so it imports
neither torch nor peft: implementations are named as ``"module:attr"`` strings.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_peft.options import LoraOptions, OftOptions

NEEDS = Requires(packages=("peft>=0.13",))

METHODS: dict[str, str] = {
    "lora": "low-rank adapters (LoRA) on the target modules",
    "dora": "weight-decomposed LoRA (DoRA)",
    "rslora": "LoRA with rank-stabilised scaling alpha / sqrt(r)",
    "pissa": "LoRA initialised from the principal singular vectors (PiSSA)",
    "loraplus": "LoRA with a higher learning rate for B (LoRA+)",
}


@hookimpl
def register_adapters(register):
    for name, description in METHODS.items():
        register(
            name,
            f"factory_plugin_peft.methods:{name.upper()}",
            requires=NEEDS,
            options=LoraOptions,
            section="lora",
            description=description,
        )
    register(
        "oft",
        "factory_plugin_peft.methods:OFT",
        requires=Requires(packages=("peft>=0.17",)),
        options=OftOptions,
        section="oft",
        description="orthogonal fine-tuning (OFT): a learned block-diagonal rotation of each target layer's input",
    )
