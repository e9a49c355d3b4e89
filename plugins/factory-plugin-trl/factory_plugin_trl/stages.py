"""The stage objects the plugin registers: the core's shared training run with a stage's own trainer.

Checks that need no model (settings the stage cannot use) run first, so a bad config fails in
a sentence before anything is loaded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.plugin_api import ConfigError, PluginManager, RunConfig

REWARDS_PLOT = "training_rewards.png"
# Logged per stage and plotted against step (whichever of them the stage logs).
PLOTTED = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "accuracy",
    "margin",
    "kl",
    "reward",
)


def check_kto(cfg: RunConfig) -> None:
    if cfg.batch_size < 2:
        raise ConfigError(
            f"stage kto estimates its KL term from each prompt paired with another answer of the same batch, "
            f"so batch_size={cfg.batch_size} is too small; set batch_size to 2 or more"
        )


def check_ppo(cfg: RunConfig) -> None:
    opts = cfg.options("ppo")
    if (opts.reward_model is None) == (opts.reward_function is None):
        raise ConfigError(
            "stage ppo needs exactly one reward source; set ppo.reward_model to the output_dir of an rm run "
            "or ppo.reward_function to 'module:function'"
        )
    if cfg.packing:
        raise ConfigError(
            "packing=true does not apply to stage ppo, which generates one answer per prompt; set packing: false"
        )
    if cfg.gradient_accumulation_steps != 1:
        raise ConfigError(
            f"stage ppo takes its optimizer steps per batch of generated answers, so gradient_accumulation_steps="
            f"{cfg.gradient_accumulation_steps} does not apply; set it to 1 and raise batch_size instead"
        )
    if cfg.val_size or cfg.eval_dataset:
        raise ConfigError("stage ppo does not evaluate on a held-out split; drop val_size and eval_dataset")


def _import(target: str) -> Callable[..., Any]:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def plot_rewards(out: Path, log_history: list[dict[str, Any]]) -> Path | None:
    """The stage's logged reward metrics against step (training and eval), as a PNG; None if none were logged."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            name = key.removeprefix("eval_")
            if name in PLOTTED and isinstance(value, (int, float)):
                series.setdefault(key, []).append((entry.get("step", 0), float(value)))
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in sorted(series.items()):
        ax.plot(
            [s for s, _ in points], [v for _, v in points], marker="o" if key.startswith("eval_") else None, label=key
        )
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / REWARDS_PLOT
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass(frozen=True)
class TRLStage:
    """A stage on the core's training run whose trainer ``builder`` (``"module:function"``) builds."""

    data_kind: str
    builder: str
    checks: tuple[Callable[[RunConfig], None], ...] = field(default=())

    def check(self, cfg: RunConfig, manager: PluginManager) -> None:
        """Settings this stage cannot use, refused before any model loads (the core calls this once)."""
        for check in self.checks:
            check(cfg)

    def run(self, cfg: RunConfig, manager: PluginManager) -> dict[str, Any]:
        from factory.plugin_api import run_training

        run = run_training(cfg, manager, self.data_kind, build_trainer=_import(self.builder))
        if run.trainer.is_world_process_zero():
            plot_rewards(run.output_dir, run.metrics["log_history"])
            print(f"\nfactory: outputs written to {run.output_dir}")
        return run.metrics


RM = TRLStage("pairwise", "factory_plugin_trl.builders:build_rm")
DPO = TRLStage("pairwise", "factory_plugin_trl.builders:build_dpo")
KTO = TRLStage("kto", "factory_plugin_trl.builders:build_kto", (check_kto,))
ORPO = TRLStage("pairwise", "factory_plugin_trl.builders:build_orpo")
SIMPO = TRLStage("pairwise", "factory_plugin_trl.builders:build_simpo")
PPO = TRLStage("supervised", "factory_plugin_trl.ppo:build_ppo", (check_ppo,))
