"""Options of the preference and reward stages, one config section per stage (``dpo.beta=0.2``).

Imported when plugins are listed, so only pydantic here. Every model validates with its
defaults; choices that depend on each other (PPO's reward source) are checked by the stage.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SHARE_BASE = (
    "with LoRA-family methods, reuse the one base model: the reference is the base with adapters disabled and "
    "the value and reward models are extra adapters; false keeps separate models"
)


class RewardOptions(BaseModel):
    """``rm.*``: reward model training."""

    model_config = ConfigDict(extra="forbid")

    center_rewards: float | None = Field(
        None, ge=0, description="weight of a term pulling the mean reward to 0 (TRL's center_rewards_coefficient)"
    )
    eval_before: bool = Field(
        True, description="score the eval split once before training too (logged at step 0), to show the gain"
    )


class DPOOptions(BaseModel):
    """``dpo.*``: direct preference optimization."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="strength of the KL constraint to the reference (IPO: its tau)")
    loss: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss: sigmoid (DPO), ipo or hinge")
    ftx: float = Field(0.0, ge=0, description="weight of an added SFT loss on the chosen answers (0: none)")
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="conservative DPO (sigmoid loss): probability that a preference label is flipped"
    )
    ref_model: str | None = Field(
        None, description="a separate reference model (folder or alias); default: the policy before training"
    )


class KTOOptions(BaseModel):
    """``kto.*``: Kahneman-Tversky optimization."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="strength of the KL constraint to the reference")
    desirable_weight: float = Field(1.0, gt=0, description="weight of the loss on desirable answers")
    undesirable_weight: float = Field(1.0, gt=0, description="weight of the loss on undesirable answers")


class SimPOOptions(BaseModel):
    """``simpo.*``: SimPO (reference-free, length-normalised log-probabilities)."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(2.0, gt=0, description="scale of the average log-probability reward")
    gamma: float = Field(1.0, ge=0, description="target reward margin between chosen and rejected")
    ftx: float = Field(0.0, ge=0, description="weight of an added SFT loss on the chosen answers (CPO's alpha)")


class ORPOOptions(BaseModel):
    """``orpo.*``: odds-ratio preference optimization."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0, description="weight of the odds-ratio term next to the SFT loss (lambda)")


class PPOOptions(BaseModel):
    """``ppo.*``: PPO against a reward model or a reward function."""

    model_config = ConfigDict(extra="forbid")

    reward_model: str | None = Field(None, description="output_dir of an rm run (adapter or full model + value head)")
    reward_function: str | None = Field(
        None, description="'module:function' scoring (prompts, responses) -> list of floats, instead of a reward model"
    )
    share_base: bool = Field(True, description=SHARE_BASE)
    max_new_tokens: int = Field(64, gt=0, description="longest response generated per prompt")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the responses")
    top_k: int = Field(0, ge=0, description="sample among the k likeliest tokens (0: all)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling threshold")
    kl_coef: float = Field(0.05, ge=0, description="initial weight of the per-token KL penalty to the reference")
    target_kl: float | None = Field(
        None, gt=0, description="adapt kl_coef so the KL stays near this value (adaptive KL control); None: fixed"
    )
    kl_horizon: int = Field(10000, gt=0, description="adaptive KL control: responses over which kl_coef adapts")
    epochs: int = Field(2, gt=0, description="optimisation passes over each batch of generated responses")
    clip_range: float = Field(0.2, gt=0, description="PPO clipping of the policy probability ratio")
    value_clip: float = Field(0.2, gt=0, description="clipping of the value update")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    gamma: float = Field(1.0, gt=0, le=1, description="discount factor")
    lam: float = Field(0.95, ge=0, le=1, description="GAE lambda")
