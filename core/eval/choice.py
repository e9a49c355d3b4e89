"""Multiple-choice evaluation (MMLU, CMMLU, C-Eval): the model's next-token logits pick the letter.

For each question the prompt is the task's header, ``n_shot`` solved examples from ``dev/`` and
the question, ending where the answer letter comes; the predicted answer is the letter among
A-D whose token has the highest logit at that position (the standard method, no generation).
The prompt is rendered with the chat template (``eval_prompt=chat``: examples as user/assistant
turns) or as plain text (``eval_prompt=raw``).

All prompts of a subject share the header and the examples, so that common token prefix is run
through the model once and its key/value cache reused for every batch of questions: on a CPU
this makes 5-shot evaluation several times faster and gives the same logits.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.config import RunConfig
from factory.errors import DataError, PluginError
from factory.eval import tasks
from factory.eval.progress import Bar, ProgressOption, progress_bar
from factory.eval.questions import Question, pick_subjects, read_questions, subject_files, task_folders
from factory.eval.results import EvalResult, accuracy
from factory.eval.tasks import LETTERS, TaskSpec
from factory.plugins import PluginManager


def question_block(spec: TaskSpec, question: Question) -> str:
    """The question, its four options and the answer cue."""
    options = "".join(spec.choice.format(letter=letter, text=text) for letter, text in zip(LETTERS, question.choices))
    return question.text + options + spec.answer


def raw_prompt(spec: TaskSpec, subject: str, shots: Sequence[Question], question: Question) -> str:
    """Header, solved examples (each followed by a blank line), then the question."""
    solved = "".join(question_block(spec, shot) + spec.answer_sep + shot.answer + "\n\n" for shot in shots)
    return spec.header.format(subject=spec.subject_name(subject)) + solved + question_block(spec, question)


def chat_messages(spec: TaskSpec, subject: str, shots: Sequence[Question], question: Question) -> list[dict[str, str]]:
    """Each example as a user turn answered by the letter; the header opens the first turn."""
    messages = []
    for shot in shots:
        messages += [
            {"role": "user", "content": question_block(spec, shot)},
            {"role": "assistant", "content": shot.answer},
        ]
    messages.append({"role": "user", "content": question_block(spec, question)})
    messages[0]["content"] = spec.header.format(subject=spec.subject_name(subject)) + messages[0]["content"]
    return messages


def choice_token_ids(tokenizer: Any, prefix: str) -> list[int]:
    """The token that starts each letter's answer (``prefix`` is what precedes the letter, e.g. a space)."""
    ids = [tokenizer.encode(prefix + letter, add_special_tokens=False)[-1] for letter in LETTERS]
    if len(set(ids)) != len(ids):
        raise PluginError(
            f"the tokenizer maps the answer letters {', '.join(LETTERS)} to the tokens {ids}, which are not distinct; "
            "multiple-choice scoring needs one token per letter"
        )
    return ids


def choice_logits(
    model: Any,
    sequences: Sequence[Sequence[int]],
    choice_ids: Sequence[int],
    *,
    batch_size: int,
    bar: Bar | None = None,
) -> list[list[float]]:
    """For each token sequence, the next-token logits of the choice tokens (in fp32)."""
    import torch

    if not sequences:
        return []
    decoder = model.get_decoder()
    shared = _common_prefix(sequences)
    cache = None
    found: dict[int, list[float]] = {}
    with torch.inference_mode():
        if shared:
            prefix = torch.tensor([list(sequences[0][:shared])], device=model.device)
            cache = decoder(input_ids=prefix, use_cache=True).past_key_values
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))  # similar lengths pad less
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            hidden = _last_hidden(model, decoder, [sequences[i][shared:] for i in rows], shared, cache)
            found.update(zip(rows, _head(model, hidden, choice_ids).tolist()))
            if bar is not None:
                bar.advance(len(rows))
    return [found[i] for i in range(len(sequences))]


def _common_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all sequences share, leaving each at least one token of its own."""
    first = sequences[0]
    limit = min(len(seq) for seq in sequences) - 1
    length = 0
    while length < limit and all(seq[length] == first[length] for seq in sequences):
        length += 1
    return length


def _last_hidden(model: Any, decoder: Any, suffixes: list[Sequence[int]], past: int, cache: Any) -> Any:
    """The final hidden state after each suffix, run after ``past`` cached prefix tokens.

    Suffixes are left-padded so the last position is every row's answer position; explicit
    position ids keep each row's real tokens at the positions they have unpadded.
    """
    import torch

    width = max(len(s) for s in suffixes)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in suffixes], device=model.device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in suffixes], device=model.device)
    positions = (past + mask.cumsum(dim=-1) - 1).clamp(min=past)
    kwargs: dict[str, Any] = {}
    if cache is not None:
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(len(suffixes))
        kwargs["past_key_values"] = rows
        mask = torch.cat([torch.ones(len(suffixes), past, dtype=mask.dtype, device=mask.device), mask], dim=-1)
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=cache is not None, **kwargs)
    return out.last_hidden_state[:, -1, :]


def _head(model: Any, hidden: Any, choice_ids: Sequence[int]) -> Any:
    """The choice tokens' logits, computed in fp32 where the output layer is a plain Linear.

    In bf16 the logits themselves are rounded to steps of ~0.25 at typical magnitudes, which
    turns close answers into ties; the four rows of the output layer are cheap to apply in fp32.
    """
    import torch

    head = model.get_output_embeddings()
    if type(head) is torch.nn.Linear:
        bias = head.bias[list(choice_ids)].float() if head.bias is not None else None
        return torch.nn.functional.linear(hidden.float(), head.weight[list(choice_ids)].float(), bias)
    return head(hidden)[:, list(choice_ids)].float()


class MultipleChoiceEvaluator:
    """The evaluator behind ``task: mmlu | cmmlu | ceval`` (see :mod:`factory.hookspecs`)."""

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def evaluate(
        self,
        cfg: RunConfig,
        manager: PluginManager,
        *,
        loaded: Any = None,
        engine: Any = None,
        progress: ProgressOption = True,
    ) -> EvalResult:
        spec = self.spec
        dev_dir, scored_dir = task_folders(spec.name, cfg.task_dir, cfg.eval_split, spec.split, cfg.n_shot)
        files = subject_files(scored_dir)
        subjects = pick_subjects(files, cfg.subjects, scored_dir)
        # Read every file before loading the model so a bad file fails in seconds.
        work = {
            name: (self._shots(dev_dir, name, cfg.n_shot), self._questions(files[name], cfg.max_samples))
            for name in subjects
        }

        if loaded is None:
            from factory.infer.engine import serving_config
            from factory.model.loader import load_model

            loaded = load_model(serving_config(cfg), manager, train=False)
        render = self._renderer(cfg, loaded.tokenizer, manager)
        letters = choice_token_ids(loaded.tokenizer, "" if cfg.eval_prompt == "chat" else spec.answer_sep)
        batch_size = cfg.eval_batch_size or cfg.batch_size

        correct: dict[str, list[bool]] = {}
        items = []
        total = sum(len(questions) for _, questions in work.values())
        with progress_bar(total, f"{spec.name} 0/{len(work)}", enabled=progress) as bar:
            for index, (subject, (shots, questions)) in enumerate(work.items(), start=1):
                bar.describe(f"{spec.name} {index}/{len(work)} {subject}")
                sequences = [render(subject, shots, question) for question in questions]
                logits = choice_logits(loaded.model, sequences, letters, batch_size=batch_size, bar=bar)
                picks = [LETTERS[max(range(len(LETTERS)), key=row.__getitem__)] for row in logits]
                correct[subject] = [pick == q.answer for pick, q in zip(picks, questions)]
                items += [
                    {"subject": subject, "row": q.row, "answer": q.answer, "prediction": pick, "logits": row}
                    for pick, q, row in zip(picks, questions, logits)
                ]

        categories: dict[str, list[bool]] = {}
        for subject, marks in correct.items():
            for category in spec.categories(subject):
                categories.setdefault(category, []).extend(marks)
        return EvalResult(
            task=spec.name,
            metric="accuracy",
            overall=accuracy([mark for marks in correct.values() for mark in marks]),
            subjects={subject: accuracy(marks) for subject, marks in correct.items()},
            categories={category: accuracy(marks) for category, marks in sorted(categories.items())},
            items=items,
            settings={
                "task_dir": str(Path(cfg.task_dir or "").resolve()),
                "split": scored_dir.name,
                "subjects": subjects,
                "n_shot": cfg.n_shot,
                "eval_prompt": cfg.eval_prompt,
                "template": cfg.template if cfg.eval_prompt == "chat" else None,
                "max_samples": cfg.max_samples,
                "dtype": str(loaded.model.dtype).removeprefix("torch."),
            },
        )

    def _shots(self, dev_dir: Path | None, subject: str, n_shot: int) -> list[Question]:
        if dev_dir is None:
            return []
        files = subject_files(dev_dir)
        if subject not in files:
            raise DataError(
                f"subject '{subject}' has no file in '{dev_dir}' to take {n_shot} examples from; add it or set n_shot=0"
            )
        shots = read_questions(files[subject])
        if len(shots) < n_shot:
            raise DataError(
                f"'{files[subject]}' holds {len(shots)} examples but n_shot={n_shot}; set n_shot={len(shots)} or lower"
            )
        return shots[:n_shot]

    @staticmethod
    def _questions(path: Path, limit: int | None) -> list[Question]:
        questions = read_questions(path)
        return questions[:limit] if limit else questions

    def _renderer(self, cfg: RunConfig, tokenizer: Any, manager: PluginManager) -> Any:
        """subject, shots, question -> prompt token ids, for the configured prompt style."""
        spec = self.spec
        if (
            cfg.eval_prompt == "raw"
        ):  # plain text gets the tokenizer's BOS, if it adds one; a chat template writes its own
            return lambda subject, shots, question: tokenizer.encode(raw_prompt(spec, subject, shots, question))
        from factory.data.template import get_template

        template = get_template(cfg.template, tokenizer, manager)

        def render(subject: str, shots: Sequence[Question], question: Question) -> list[int]:
            text = template.render_text(
                chat_messages(spec, subject, shots, question),
                system=cfg.system or "",
                add_generation_prompt=True,
                tokenizer=tokenizer,
            )
            return tokenizer.encode(text, add_special_tokens=False)

        return render


MMLU = MultipleChoiceEvaluator(tasks.MMLU)
CMMLU = MultipleChoiceEvaluator(tasks.CMMLU)
CEVAL = MultipleChoiceEvaluator(tasks.CEVAL)
