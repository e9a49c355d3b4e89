"""What makes MMLU, CMMLU and C-Eval different: the prompt wording, the subjects, the split to score.

All three share the CSV shape and the scoring (see :mod:`factory.eval.choice`); a
:class:`TaskSpec` holds only what differs, so adding a benchmark of the same shape is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from factory.eval import subjects as tables

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class TaskSpec:
    """One multiple-choice benchmark.

    A question is rendered as ``question`` + one ``choice`` line per letter + ``answer`` (the
    cue after which the model names a letter). In a raw prompt a solved example continues with
    ``answer_sep`` + the letter; in a chat prompt the letter is the assistant's whole reply.
    """

    name: str
    header: str  # opens the first question; {subject} is the subject's readable name
    answer: str
    answer_sep: str
    split: str  # the folder scored by default (C-Eval publishes no answers for test/)
    subjects: tables.Subjects = field(default_factory=dict)
    choice: str = "\n{letter}. {text}"

    def subject_name(self, subject: str) -> str:
        return self.subjects.get(subject, (subject.replace("_", " "), ()))[0]

    def categories(self, subject: str) -> tuple[str, ...]:
        return self.subjects.get(subject, ("", ()))[1]


MMLU = TaskSpec(
    name="mmlu",
    header="The following are multiple choice questions (with answers) about {subject}.\n\n",
    answer="\nAnswer:",
    answer_sep=" ",
    split="test",
    subjects=tables.MMLU,
)
CMMLU = TaskSpec(
    name="cmmlu",
    header="以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n",
    answer="\n答案：",
    answer_sep="",
    split="test",
    subjects=tables.CMMLU,
)
CEVAL = TaskSpec(
    name="ceval",
    header="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
    answer="\n答案：",
    answer_sep="",
    split="val",
    subjects=tables.CEVAL,
)
