"""``factory predict`` (task ``bleu-rouge``): answer every prompt of a data set and score the answers.

Each standard record whose last message is a response is a test item: the messages before it
are rendered with the chat template and generated from, the response is the reference. The
answers are saved as JSON lines (``prompt``, ``predict``, ``label`` as LLaMA-Factory writes them,
plus the data set and the item's scores) and scored with :mod:`factory.eval.metrics`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from factory.config import RunConfig
from factory.data.record import RESPONSE_ROLES
from factory.errors import ConfigError, DataError
from factory.eval.metrics import METRICS, text_scores
from factory.eval.progress import Bar, progress_bar
from factory.eval.results import EvalResult, mean_scores
from factory.plugins import PluginManager

PREDICTIONS_FILE = "generated_predictions.jsonl"


def reference_items(records: Any, name: str) -> list[dict[str, Any]]:
    """(prompt messages, system, tools, reference) of every record that ends in a response."""
    items = []
    for record in records:
        messages = record.get("messages") or []
        if len(messages) < 2 or messages[-1]["role"] not in RESPONSE_ROLES:
            continue
        items.append(
            {
                "messages": messages[:-1],
                "system": record.get("system") or "",
                "tools": record.get("tools") or "",
                "label": messages[-1]["content"],
            }
        )
    if not items:
        raise DataError(
            f"data set '{name}' has no conversation ending in an assistant answer to compare with; "
            "predict needs a supervised data set (instruction/answer pairs)"
        )
    return items


def predictions_path(cfg: RunConfig) -> Path:
    """Where the predictions go, refusing to overwrite an earlier run's unless told to."""
    folder = Path(cfg.output_dir or f"outputs/predict-{time.strftime('%Y%m%d-%H%M%S')}")
    path = folder / PREDICTIONS_FILE
    if path.exists() and not cfg.overwrite_output_dir:
        raise ConfigError(f"'{path}' already exists; pass overwrite_output_dir=true to replace it, or choose another output_dir")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir '{folder}' is a file; choose a folder")
    return path


def stop_token_ids(tokenizer: Any, template: Any) -> list[int]:
    """End of sequence plus the template's end-of-turn markers that are single tokens."""
    ids = {tokenizer.eos_token_id}
    for word in template.stop_words:
        tid = tokenizer.convert_tokens_to_ids(word)
        if tid is not None and tid != tokenizer.unk_token_id:
            ids.add(tid)
    return sorted(i for i in ids if i is not None)


def generate_batch(model: Any, tokenizer: Any, template: Any, prompts: list[str], cfg: RunConfig, bar: Bar) -> list[str]:
    """Greedy (or sampled, at temperature > 0) answers to rendered prompts, in batches, left-padded."""
    import torch

    sampling = {"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.temperature > 0 else {"do_sample": False}
    stops = stop_token_ids(tokenizer, template)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        size = cfg.eval_batch_size or cfg.batch_size
        for start in range(0, len(prompts), size):
            batch = tokenizer(prompts[start:start + size], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(
                    **batch, max_new_tokens=cfg.max_new_tokens, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id, **sampling
                )
            for row in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True):
                for word in template.stop_words:
                    row = row.split(word)[0]
                answers.append(row.strip())
            bar.advance(len(batch["input_ids"]))
    finally:
        tokenizer.padding_side = side
    return answers


class PredictEvaluator:
    """The evaluator behind ``task: bleu-rouge`` and ``factory predict`` (see :mod:`factory.hookspecs`)."""

    def evaluate(self, cfg: RunConfig, manager: PluginManager, *, loaded: Any = None, progress: bool = True) -> EvalResult:
        from factory.data.loading import load_records
        from factory.data.template import get_template

        names = ([cfg.eval_dataset] if isinstance(cfg.eval_dataset, str) else list(cfg.eval_dataset)) if cfg.eval_dataset else cfg.datasets
        sets = {name: reference_items(load_records(name, cfg, manager), name) for name in names}
        path = predictions_path(cfg)
        if loaded is None:
            from factory.model.loader import load_model

            loaded = load_model(cfg, manager, train=False)
        if cfg.temperature > 0:
            from transformers import set_seed

            set_seed(cfg.seed)
        tokenizer = loaded.tokenizer
        template = get_template(cfg.template, tokenizer, manager)

        rows: list[dict[str, Any]] = []
        subjects = {}
        with progress_bar(sum(len(items) for items in sets.values()), "predict", enabled=progress) as bar:
            for name, items in sets.items():
                bar.describe(f"predict {name}")
                prompts = [
                    template.render_text(
                        item["messages"], system=item["system"] or cfg.system or "", tools=item["tools"],
                        add_generation_prompt=True, tokenizer=tokenizer,
                    )
                    for item in items
                ]
                answers = generate_batch(loaded.model, tokenizer, template, prompts, cfg, bar)
                scored = [text_scores(answer, item["label"]) for answer, item in zip(answers, items)]
                subjects[name] = mean_scores(scored)
                rows += [
                    {"dataset": name, "prompt": prompt, "predict": answer, "label": item["label"], **scores}
                    for prompt, answer, item, scores in zip(prompts, answers, items, scored)
                ]

        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        return EvalResult(
            task="bleu-rouge",
            metric="bleu-4",
            overall=mean_scores([{metric: row[metric] for metric in METRICS} for row in rows]),
            subjects=subjects,
            items=rows,
            settings={
                "datasets": names,
                "template": cfg.template,
                "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "max_samples": cfg.max_samples,
                "precision": cfg.precision,
            },
            output_file=str(path.resolve()),
        )


PREDICT = PredictEvaluator()
