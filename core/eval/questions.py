"""Reading multiple-choice CSV folders: ``TASK_DIR/{dev,test,val}/SUBJECT.csv``.

MMLU, CMMLU and C-Eval publish the same shape: a question, four options and the answer letter,
one file per subject; ``dev/`` holds the few-shot examples. Files may have a header (CMMLU,
C-Eval: ``Question,A,B,C,D,Answer`` with an index column first) or none (MMLU: six columns),
and may be named ``SUBJECT.csv`` or ``SUBJECT_SPLIT.csv``. The standard library's csv reader
handles the quoting; this module only maps columns and reports bad files in one sentence.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from factory.errors import ConfigError, DataError, did_you_mean, one_of
from factory.eval.tasks import LETTERS

SPLITS = ("test", "val")


@dataclass(frozen=True)
class Question:
    text: str
    choices: tuple[str, str, str, str]
    answer: str  # one of LETTERS
    row: int  # 1-based data row in its file, for reports


def task_folders(
    task: str, task_dir: str | None, split: str | None, default_split: str, n_shot: int
) -> tuple[Path | None, Path]:
    """The few-shot folder (None without shots) and the folder to score, checked to exist."""
    if not task_dir:
        raise ConfigError(
            f"task={task} needs task_dir=DIR, a folder holding dev/ and {default_split}/ with one CSV file per subject"
        )
    root = Path(task_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"task_dir '{task_dir}' is not a folder; give the folder holding dev/ and {default_split}/")
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    if split:
        if not (root / split).is_dir():
            raise ConfigError(
                f"eval_split '{split}' is not a folder of task_dir '{task_dir}'{did_you_mean(split, present)} "
                f"(folders: {one_of(present)})"
            )
        scored = root / split
    else:
        found = [name for name in (default_split, *SPLITS) if (root / name).is_dir()]
        if not found:
            raise ConfigError(
                f"task_dir '{task_dir}' has no {default_split}/ folder of questions to score (folders: {one_of(present)}); "
                "point task_dir at the benchmark's root or name the folder with eval_split=NAME"
            )
        scored = root / found[0]
    dev = root / "dev"
    if n_shot > 0 and not dev.is_dir():
        raise ConfigError(
            f"n_shot={n_shot} needs few-shot examples in '{dev}', which does not exist; add it or set n_shot=0"
        )
    return (dev if n_shot > 0 else None), scored


def subject_files(folder: Path) -> dict[str, Path]:
    """Subject name -> CSV file in ``folder`` (a ``_SPLIT`` suffix of the file name is dropped)."""
    suffix = f"_{folder.name}"
    return {p.stem.removesuffix(suffix): p for p in sorted(folder.glob("*.csv"))}


def pick_subjects(available: dict[str, Path], wanted: Sequence[str] | None, folder: Path) -> list[str]:
    """The subjects to run: ``wanted`` in its order, or every file of the folder."""
    if not available:
        raise ConfigError(f"'{folder}' holds no .csv files; point task_dir at a folder with one CSV file per subject")
    if not wanted:
        return list(available)
    for name in wanted:
        if name not in available:
            hint = did_you_mean(name, available) or "; name subjects by their file names without .csv"
            raise ConfigError(f"subject '{name}' has no CSV file among the {len(available)} in '{folder}'{hint}")
    return list(dict.fromkeys(wanted))


def read_questions(path: Path) -> list[Question]:
    """Every question of one CSV file, with a one-sentence DataError for a file that is not in the shape."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle, strict=True))
    except UnicodeDecodeError:
        raise DataError(f"'{path}' is not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise DataError(f"'{path}' is not a readable CSV file ({exc}); check its quoting") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"'{path}' is empty; each subject file needs questions with options A-D and an answer")
    columns, width, has_header = _columns(rows[0], path)
    start = 1 if has_header else 0
    questions = []
    for number, row in enumerate(rows[start:], start=1):
        if len(row) != width:
            raise DataError(
                f"row {number} of '{path}' has {len(row)} fields where {width} are expected; "
                "quote fields that contain commas"
            )
        answer = row[columns["answer"]].strip().upper()
        if answer not in LETTERS:
            raise DataError(
                f"row {number} of '{path}' has the answer {row[columns['answer']]!r}; answers must be one of A, B, C, D"
            )
        choices = tuple(row[columns[letter]] for letter in LETTERS)
        questions.append(Question(row[columns["question"]], choices, answer, number))  # type: ignore[arg-type]
    if not questions:
        raise DataError(f"'{path}' has a header but no questions; add rows or remove the file")
    return questions


def _columns(first: list[str], path: Path) -> tuple[dict[str, int], int, bool]:
    """Column positions from the header, or the fixed MMLU order when the file has none."""
    names = [cell.strip().lower() for cell in first]
    if "question" in names or "answer" in names:
        wanted = ["question", *(letter.lower() for letter in LETTERS), "answer"]
        missing = [name for name in wanted if name not in names]
        if missing:
            raise DataError(
                f"'{path}' has no '{missing[0]}' column (header: {', '.join(first)}); "
                "the columns must be Question, A, B, C, D, Answer"
            )
        columns = {name if len(name) > 1 else name.upper(): names.index(name) for name in wanted}
        return columns, len(first), True
    if len(first) != 6:
        raise DataError(
            f"'{path}' has no header and {len(first)} columns; give a header row (Question,A,B,C,D,Answer) "
            "or exactly six columns in that order"
        )
    return {"question": 0, "A": 1, "B": 2, "C": 3, "D": 4, "answer": 5}, 6, False
