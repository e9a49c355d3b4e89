"""Built-in evaluators: multiple-choice benchmarks (factory.eval.choice) and BLEU/ROUGE prediction."""

from __future__ import annotations

from factory.hookspecs import hookimpl
from factory.registry import Requires

_METRICS = Requires(packages=("jieba", "nltk", "rouge-chinese"))


@hookimpl
def register_evaluators(register):
    register("mmlu", "factory.eval.choice:MMLU", description="MMLU-shaped CSVs, English prompt, answer-letter logits")
    register(
        "cmmlu", "factory.eval.choice:CMMLU", description="CMMLU-shaped CSVs, Chinese prompt, answer-letter logits"
    )
    register(
        "ceval",
        "factory.eval.choice:CEVAL",
        description="C-Eval-shaped CSVs (scores val/), Chinese prompt, answer-letter logits",
    )
    register(
        "bleu-rouge",
        "factory.eval.predict:PREDICT",
        requires=_METRICS,
        description="generate for a data set, BLEU-4 and ROUGE-1/2/L against its answers (factory predict)",
    )
