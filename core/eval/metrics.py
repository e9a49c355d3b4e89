"""BLEU-4 and ROUGE-1/2/L of a generated answer against its reference, computed as LLaMA-Factory does.

So that numbers compare with LLaMA-Factory's ``do_predict``: ROUGE F-scores come from
``rouge-chinese`` on jieba-segmented words (jieba leaves English words whole, so this works for
both languages), BLEU-4 from nltk's ``sentence_bleu`` on characters with smoothing method 3;
each is scaled to 0-100 and averaged over the items.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")


@functools.cache
def _tools() -> tuple[Any, Any, Any, Any]:
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba.setLogLevel(logging.WARNING)  # it announces building its dictionary at INFO
    return jieba, sentence_bleu, SmoothingFunction().method3, Rouge()


def text_scores(prediction: str, reference: str) -> dict[str, float]:
    """BLEU-4 and ROUGE-1/2/L (0-100) of one prediction."""
    jieba, sentence_bleu, smoothing, rouge = _tools()
    hypothesis = " ".join(jieba.cut(prediction))
    target = " ".join(jieba.cut(reference))
    if hypothesis.split() and target.split():
        found = rouge.get_scores(hypothesis, target)[0]
        scores = {name: found[name]["f"] * 100 for name in METRICS[1:]}
    else:  # rouge-chinese refuses empty text; nothing in common scores zero
        scores = dict.fromkeys(METRICS[1:], 0.0)
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=smoothing) if prediction else 0.0
    return {"bleu-4": bleu * 100, **scores}
