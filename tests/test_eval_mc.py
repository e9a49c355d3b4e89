"""Multiple-choice evaluation (cmmlu/mmlu/ceval): reading the CSVs, prompts, bad input, and accuracy
against an independent computation with plain transformers on the real SmolLM2 model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from factory.config import load_config
from factory.errors import ConfigError, DataError, FactoryError
from factory.eval import evaluate
from factory.eval.choice import chat_messages, raw_prompt
from factory.eval.questions import Question, read_questions
from factory.eval.tasks import CEVAL, CMMLU, MMLU

CMMLU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cmmlu"
SUBJECT = "anatomy"  # among the shortest 5-shot prompts of CMMLU
LETTERS = "ABCD"


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


# -- reading ----------------------------------------------------------------------------------


def test_reads_every_shared_cmmlu_file_like_pandas():
    import pandas as pd

    for split in ("dev", "test"):
        for path in sorted((CMMLU_DIR / split).glob("*.csv"))[:12]:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            questions = read_questions(path)
            assert len(questions) == len(frame), path
            for question, (_, row) in zip(questions, frame.iterrows()):
                assert question.text == row["Question"]
                assert question.choices == (row["A"], row["B"], row["C"], row["D"])
                assert question.answer == row["Answer"]


def test_reads_mmlu_headerless_and_ceval_file_names(tmp_path):
    mmlu = write_csv(tmp_path / "mmlu" / "test" / "astronomy_test.csv", [["What is 2+2?", "3", "4", "5", "6", "B"]])
    write_csv(tmp_path / "mmlu" / "dev" / "astronomy_dev.csv", [["Q?", "a", "b", "c", "d", "A"]])
    assert read_questions(mmlu) == [Question("What is 2+2?", ("3", "4", "5", "6"), "B", 1)]
    ceval = write_csv(
        tmp_path / "ceval" / "val" / "logic_val.csv",
        [["id", "question", "A", "B", "C", "D", "answer"], ["0", "问题", "甲", "乙", "丙", "丁", "d"]],
    )
    assert read_questions(ceval) == [Question("问题", ("甲", "乙", "丙", "丁"), "D", 1)]


# -- prompts ----------------------------------------------------------------------------------


SHOT = Question("1+1=?", ("1", "2", "3", "4"), "B", 1)
ASKED = Question("2+2=?", ("2", "3", "4", "5"), "C", 1)


def test_prompt_wording_per_task():
    assert raw_prompt(MMLU, "college_physics", [SHOT], ASKED) == (
        "The following are multiple choice questions (with answers) about college physics.\n\n"
        "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "2+2=?\nA. 2\nB. 3\nC. 4\nD. 5\nAnswer:"
    )
    assert raw_prompt(CMMLU, "anatomy", [SHOT], ASKED) == (
        "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
        "1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\n答案：B\n\n"
        "2+2=?\nA. 2\nB. 3\nC. 4\nD. 5\n答案："
    )
    assert chat_messages(CEVAL, "logic", [SHOT], ASKED) == [
        {
            "role": "user",
            "content": "以下是中国关于逻辑学考试的单项选择题，请选出其中的正确答案。\n\n1+1=?\nA. 1\nB. 2\nC. 3\nD. 4\n答案：",
        },
        {"role": "assistant", "content": "B"},
        {"role": "user", "content": "2+2=?\nA. 2\nB. 3\nC. 4\nD. 5\n答案："},
    ]


def test_tables_cover_the_benchmarks():
    assert (len(MMLU.subjects), len(CMMLU.subjects), len(CEVAL.subjects)) == (57, 67, 52)
    assert {path.stem for path in (CMMLU_DIR / "test").glob("*.csv")} == set(CMMLU.subjects)
    assert CMMLU.categories("chinese_history") == ("Humanities", "China specific")


# -- bad input: one sentence each, before any model is loaded ---------------------------------


def unloadable_model() -> str:
    """A folder a loader accepts but that holds no weights: any attempt to load it would fail differently."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="factory-no-weights-"))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return str(folder)


def run_eval(**settings):
    return evaluate(load_config(model=unloadable_model(), task="cmmlu", **settings), record=False, progress=False)


def one_sentence(exc: FactoryError) -> str:
    text = str(exc)
    assert "\n" not in text and text.count(". ") == 0, text
    return text


def test_missing_task_dir():
    with pytest.raises(ConfigError) as err:
        run_eval()
    assert one_sentence(err.value) == (
        "task=cmmlu needs task_dir=DIR, a folder holding dev/ and test/ with one CSV file per subject"
    )


def test_task_dir_that_is_not_a_folder(tmp_path):
    with pytest.raises(ConfigError, match=r"task_dir '.*nope' is not a folder"):
        run_eval(task_dir=str(tmp_path / "nope"))


def test_unknown_subject_suggests_the_closest():
    with pytest.raises(ConfigError) as err:
        run_eval(task_dir=str(CMMLU_DIR), subjects="anatomy,anatomyy")
    assert one_sentence(err.value).startswith("subject 'anatomyy' has no CSV file among the 67 in ")
    assert "did you mean 'anatomy'?" in str(err.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [["", "Question", "A", "B", "C", "D", "Answer"], ["0", "q", "a", "b", "c"]],
            "row 1 of '.*' has 5 fields where 7 are expected",
        ),
        (
            [["", "Question", "A", "B", "C", "D", "Answer"], ["0", "q", "a", "b", "c", "d", "E"]],
            "row 1 of '.*' has the answer 'E'; answers must be one of A, B, C, D",
        ),
        ([["", "Question", "A", "B", "C", "D"], ["0", "q", "a", "b", "c", "d"]], "'.*' has no 'answer' column"),
        ([["q", "a", "b"]], "'.*' has no header and 3 columns"),
        ([], "'.*' is empty"),
    ],
)
def test_malformed_csv(tmp_path, rows, message):
    write_csv(tmp_path / "test" / "physics.csv", rows)
    with pytest.raises(DataError, match=message) as err:
        run_eval(task_dir=str(tmp_path), n_shot=0)
    one_sentence(err.value)


def test_too_few_shots(tmp_path):
    write_csv(
        tmp_path / "test" / "physics.csv", [["Question", "A", "B", "C", "D", "Answer"], ["q", "a", "b", "c", "d", "A"]]
    )
    write_csv(
        tmp_path / "dev" / "physics.csv", [["Question", "A", "B", "C", "D", "Answer"], ["q", "a", "b", "c", "d", "A"]]
    )
    with pytest.raises(DataError, match=r"holds 1 examples but n_shot=5; set n_shot=1 or lower"):
        run_eval(task_dir=str(tmp_path))


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from factory.cli import main

    code = main(["eval", "task=cmmlu", f"task_dir={CMMLU_DIR}", "subjects=anatomi", f"results_db={tmp_path / 'r.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: subject 'anatomi' has no CSV file among the 67 in ") and err.count("\n") == 1
    assert "did you mean 'anatomy'?" in err


# -- against an independent computation ------------------------------------------------------


def oracle(model_path: Path, *, chat: bool, n: int, shots: int = 5) -> tuple[list[str], list[list[float]]]:
    """n-shot CMMLU answers computed with plain transformers: own prompt text, one prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with open(CMMLU_DIR / "dev" / f"{SUBJECT}.csv", encoding="utf-8") as handle:
        examples = list(csv.DictReader(handle))[:shots]
    with open(CMMLU_DIR / "test" / f"{SUBJECT}.csv", encoding="utf-8") as handle:
        tests = list(csv.DictReader(handle))[:n]

    def block(row):
        return row["Question"] + "".join(f"\n{x}. {row[x]}" for x in LETTERS) + "\n答案："

    header = "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n"
    letter_ids = [tokenizer.convert_tokens_to_ids(x) for x in LETTERS]
    answers, logits = [], []
    for row in tests:
        if chat:
            messages = []
            for shot in examples:
                messages += [{"role": "user", "content": block(shot)}, {"role": "assistant", "content": shot["Answer"]}]
            messages.append({"role": "user", "content": block(row)})
            messages[0]["content"] = header + messages[0]["content"]
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = header + "".join(block(shot) + shot["Answer"] + "\n\n" for shot in examples) + block(row)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=not chat).input_ids
        with torch.inference_mode():
            last = model(ids, logits_to_keep=1).logits[0, -1]
        scores = last[letter_ids].tolist()
        answers.append(LETTERS[int(torch.tensor(scores).argmax())])
        logits.append(scores)
    return answers, logits


@pytest.mark.parametrize("prompt", ["raw", "chat"])
def test_accuracy_equals_plain_transformers(smollm2_path, tmp_path, prompt):
    n = 8
    result = evaluate(
        load_config(
            model=str(smollm2_path),
            task="cmmlu",
            task_dir=str(CMMLU_DIR),
            subjects=[SUBJECT],
            n_shot=5,
            eval_prompt=prompt,
            max_samples=n,
            precision="fp32",
            eval_batch_size=4,
        ),
        record=False,
        progress=False,
    )
    answers, logits = oracle(smollm2_path, chat=prompt == "chat", n=n)
    golden = [item["answer"] for item in result.items]
    assert [item["prediction"] for item in result.items] == answers
    expected = sum(a == g for a, g in zip(answers, golden)) / n
    assert result.subjects[SUBJECT].values["accuracy"] == expected == result.overall.values["accuracy"]
    assert result.categories["STEM"].values["accuracy"] == expected
    for item, row in zip(result.items, logits):
        assert item["logits"] == pytest.approx(row, abs=1e-3)


@pytest.mark.e2e
def test_full_subject_accuracy_equals_plain_transformers(smollm2_path, tmp_path, capsys):
    """The acceptance check on a whole subject (148 questions) through the CLI. Zero-shot keeps the oracle's
    148 prompts short; the 5-shot prompts are checked question by question above."""
    import json

    from factory.cli import main

    code = main(
        [
            "eval",
            f"model={smollm2_path}",
            "task=cmmlu",
            f"task_dir={CMMLU_DIR}",
            f"subjects={SUBJECT}",
            "n_shot=0",
            "eval_prompt=raw",
            "precision=fp32",
            f"results_db={tmp_path / 'r.db'}",
            "--json",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    scores = json.loads(out)
    answers, _ = oracle(smollm2_path, chat=False, n=10_000, shots=0)
    golden = [q.answer for q in read_questions(CMMLU_DIR / "test" / f"{SUBJECT}.csv")]
    assert len(answers) == len(golden) == 148
    assert scores["subjects"][SUBJECT]["values"]["accuracy"] == sum(a == g for a, g in zip(answers, golden)) / len(
        golden
    )


def test_adapter_is_applied(tiny_causal_lm, tmp_path):
    """adapter=DIR scores the adapted model: logits equal a PeftModel loaded by hand, and differ from the base's."""
    peft = pytest.importorskip("peft")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if "lora" not in load_config().manager().names("adapters"):
        pytest.skip("no plugin registers the lora method here")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")

    settings = dict(
        model=str(tiny_causal_lm),
        task="cmmlu",
        task_dir=str(CMMLU_DIR),
        subjects=[SUBJECT],
        n_shot=1,
        eval_prompt="raw",
        max_samples=4,
        precision="fp32",
    )
    plain = evaluate(load_config(**settings), record=False, progress=False)
    adapted = evaluate(load_config(**settings, adapter=str(tmp_path / "adapter")), record=False, progress=False)

    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = peft.PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32), tmp_path / "adapter"
    ).eval()
    shots = read_questions(CMMLU_DIR / "dev" / f"{SUBJECT}.csv")[:1]
    letters = [tokenizer.convert_tokens_to_ids(x) for x in LETTERS]
    for item, question in zip(adapted.items, read_questions(CMMLU_DIR / "test" / f"{SUBJECT}.csv")):
        ids = tokenizer(raw_prompt(CMMLU, SUBJECT, shots, question), return_tensors="pt").input_ids
        with torch.inference_mode():
            expected = model(ids).logits[0, -1, letters].tolist()
        assert item["logits"] == pytest.approx(expected, abs=1e-4)
    flat = [[value for item in run.items for value in item["logits"]] for run in (plain, adapted)]
    assert max(abs(a - b) for a, b in zip(*flat)) > 1e-3
