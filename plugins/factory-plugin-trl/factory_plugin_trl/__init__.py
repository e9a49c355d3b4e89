"""factory-plugin-trl: preference and reward training stages, through TRL.

Registers the stages ``rm``, ``dpo``, ``kto``, ``orpo``, ``simpo`` and ``ppo``, each reading the
config section of its own name (``dpo.beta=0.2``), and the data kinds they train on, ``pairwise``
and ``kto``. This module is imported when plugins are
listed, so it imports neither torch nor trl: implementations are ``"module:attr"`` strings.
"""

from __future__ import annotations

from factory.plugin_api import Requires, hookimpl
from factory_plugin_trl.options import (
    DPOOptions,
    KTOOptions,
    ORPOOptions,
    PPOOptions,
    RewardOptions,
    SimPOOptions,
)

# The losses are TRL 1.x's (tests/test_losses.py checks each against TRL's trainers), and PPO uses
# its log-softmax helper, so the plugin follows TRL's major version.
NEEDS = Requires(packages=("trl>=1.16,<2",))

STAGES: dict[str, tuple[type, str]] = {
    "rm": (RewardOptions, "reward model: a value head on the causal LM, trained on chosen/rejected pairs"),
    "dpo": (DPOOptions, "direct preference optimization (sigmoid, ipo or hinge loss) against a reference"),
    "kto": (KTOOptions, "Kahneman-Tversky optimization on answers labelled desirable or undesirable"),
    "orpo": (ORPOOptions, "odds-ratio preference optimization: SFT plus an odds-ratio term, no reference"),
    "simpo": (SimPOOptions, "simple preference optimization: length-normalised margin, no reference"),
    "ppo": (PPOOptions, "proximal policy optimization against a reward model (from rm) or a reward function"),
}


@hookimpl
def register_data_kinds(register):
    register(
        "pairwise",
        "factory_plugin_trl.data:PAIRWISE",
        requires=NEEDS,
        description="a prompt with a chosen and a rejected answer (rm, dpo, orpo, simpo)",
    )
    register(
        "kto",
        "factory_plugin_trl.data:KTO_ROWS",
        requires=NEEDS,
        description="a conversation whose answer is labelled desirable or not (kto)",
    )


@hookimpl
def register_stages(register):
    for name, (options, description) in STAGES.items():
        register(
            name,
            f"factory_plugin_trl.stages:{name.upper()}",
            requires=NEEDS,
            options=options,
            section=name,
            description=description,
        )
