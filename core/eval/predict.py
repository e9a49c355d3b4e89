"""``factory predict`` (task ``bleu-rouge``): answer every prompt of a data set and score the answers.

Each standard record whose last message is a response is a test item: the messages before it
go to the inference engine (``engine: transformers``, or vllm...), the response is the reference. The
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
from factory.eval.progress import ProgressOption, progress_bar
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
        raise ConfigError(
            f"'{path}' already exists; pass overwrite_output_dir=true to replace it, or choose another output_dir"
        )
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir '{folder}' is a file; choose a folder")
    return path


class PredictEvaluator:
    """The evaluator behind ``task: bleu-rouge`` and ``factory predict`` (see :mod:`factory.hookspecs`)."""

    def evaluate(
        self,
        cfg: RunConfig,
        manager: PluginManager,
        *,
        loaded: Any = None,
        engine: Any = None,
        progress: ProgressOption = True,
    ) -> EvalResult:
        from factory.data.worker import load_records
        from factory.extras import require
        from factory.infer.base import GenerationRequest, load_engine

        require("metrics", f"task {cfg.task} (BLEU and ROUGE)")  # before any model loads
        names = (
            ([cfg.eval_dataset] if isinstance(cfg.eval_dataset, str) else list(cfg.eval_dataset))
            if cfg.eval_dataset
            else cfg.datasets
        )
        sets = {name: reference_items(load_records(name, cfg, manager), name) for name in names}
        path = predictions_path(cfg)
        own = engine is None
        if own:
            engine = load_engine(cfg, manager)
        rows: list[dict[str, Any]] = []
        subjects = {}
        try:
            with progress_bar(sum(len(items) for items in sets.values()), "predict", enabled=progress) as bar:
                for name, items in sets.items():
                    bar.describe(f"predict {name}")
                    requests = [
                        GenerationRequest.from_config(
                            cfg,
                            item["messages"],
                            system=item["system"] or cfg.system,
                            tools=item["tools"],
                            seed=cfg.seed if cfg.temperature > 0 else None,
                        )
                        for item in items
                    ]
                    answers = []
                    for start in range(0, len(requests), cfg.max_batch_size):
                        chunk = requests[start : start + cfg.max_batch_size]
                        answers += [done.text.strip() for done in engine.generate(chunk)]
                        bar.advance(len(chunk))
                    scored = [text_scores(answer, item["label"]) for answer, item in zip(answers, items)]
                    subjects[name] = mean_scores(scored)
                    rows += [
                        {
                            "dataset": name,
                            "prompt": _prompt_text(engine, request),
                            "predict": answer,
                            "label": item["label"],
                            **scores,
                        }
                        for request, answer, item, scores in zip(requests, answers, items, scored)
                    ]
        finally:
            if own:
                engine.close()

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
                "engine": cfg.engine,
                "template": cfg.template,
                "max_new_tokens": cfg.max_new_tokens,
                "temperature": cfg.temperature,
                "top_p": cfg.top_p,
                "max_samples": cfg.max_samples,
                "precision": cfg.precision,
            },
            output_file=str(path.resolve()),
        )


def _prompt_text(engine: Any, request: Any) -> str:
    """The rendered prompt the engine generated from, for the predictions file."""
    return engine.template.render_text(
        request.messages,
        system=request.system or "",
        tools=request.tools,
        add_generation_prompt=True,
        tokenizer=engine.tokenizer,
    )


PREDICT = PredictEvaluator()
