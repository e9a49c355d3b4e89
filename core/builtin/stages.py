"""Built-in training stages: pre-training (pt) and supervised fine-tuning (sft)."""

from __future__ import annotations

from factory.hookspecs import hookimpl


@hookimpl
def register_stages(register):
    register("pt", "factory.train.stages:PRETRAIN", description="causal LM pre-training on plain text")
    register("sft", "factory.train.stages:SUPERVISED", description="supervised fine-tuning on conversations")
