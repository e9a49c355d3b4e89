"""factory predict: BLEU-4 / ROUGE-1/2/L equal the reference libraries, predictions are the model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factory.config import load_config
from factory.errors import ConfigError, DataError
from factory.eval import evaluate
from factory.eval.metrics import METRICS, text_scores

PAIRS = [
    ("细胞理论是生物科学的一个理论", "细胞理论是生物科学的基础理论之一"),
    ("日心说是指太阳是太阳系的中心", "太阳是太阳系的中心，这就是日心说。"),
    ("今天天气很好", "明天会下雨吗"),
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("我爱北京天安门", "我爱北京天安门"),
]


def reference_scores(prediction: str, label: str) -> dict[str, float]:
    """LLaMA-Factory's recipe, straight from the libraries: jieba + rouge-chinese, nltk BLEU on characters."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    found = Rouge().get_scores(" ".join(jieba.cut(prediction)), " ".join(jieba.cut(label)))[0]
    bleu = sentence_bleu([list(label)], list(prediction), smoothing_function=SmoothingFunction().method3)
    return {"bleu-4": bleu * 100, **{name: found[name]["f"] * 100 for name in ("rouge-1", "rouge-2", "rouge-l")}}


@pytest.mark.parametrize(("prediction", "label"), PAIRS)
def test_scores_equal_the_reference_libraries(prediction, label):
    assert text_scores(prediction, label) == reference_scores(prediction, label)


@pytest.mark.parametrize(("prediction", "label"), [p for p in PAIRS if " " not in p[0] + p[1]])
def test_bleu_equals_sacrebleu_on_characters(prediction, label):
    """An independent BLEU implementation: sacrebleu's NIST ('exp') smoothing is nltk's method 3."""
    from sacrebleu.metrics import BLEU

    expected = (
        BLEU(tokenize="char", smooth_method="exp", effective_order=True).sentence_score(prediction, [label]).score
    )
    assert text_scores(prediction, label)["bleu-4"] == pytest.approx(expected, rel=1e-9)


def test_identical_empty_and_disjoint():
    assert text_scores("我爱北京天安门", "我爱北京天安门") == pytest.approx(dict.fromkeys(METRICS, 100.0))
    assert text_scores("", "参考答案") == dict.fromkeys(METRICS, 0.0)
    assert text_scores("甲乙丙丁", "戊己庚辛")["rouge-1"] == 0.0


def write_alpaca(path, rows):
    path.write_text(
        json.dumps([{"instruction": q, "input": "", "output": a} for q, a in rows], ensure_ascii=False),
        encoding="utf-8",
    )
    return path


ROWS = [("中国的首都是哪里？", "中国的首都是北京。"), ("What is 2+2?", "2+2 equals 4."), ("请说一个颜色。", "红色。")]


def test_cli_predict_scores_saves_and_records(smollm2_path, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.cli import main

    data = write_alpaca(tmp_path / "qa.json", ROWS)
    out, db = tmp_path / "out", tmp_path / "results.db"
    code = main(
        [
            "predict",
            f"model={smollm2_path}",
            f"dataset={data}",
            "max_new_tokens=12",
            f"output_dir={out}",
            f"results_db={db}",
            "--json",
        ]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err
    result = json.loads(printed.out)
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [row["label"] for row in rows] == [answer for _, answer in ROWS]

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    for (question, _), row in zip(ROWS, rows):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        assert row["prompt"] == prompt
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            greedy = model.generate(
                ids, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>")
            )
        assert row["predict"] == tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True).strip()
        assert {m: row[m] for m in METRICS} == reference_scores(row["predict"], row["label"])

    for metric in METRICS:
        mean = sum(reference_scores(row["predict"], row["label"])[metric] for row in rows) / len(rows)
        assert result["overall"]["values"][metric] == pytest.approx(mean, rel=1e-12)
    assert result["overall"]["n"] == 3 and result["output_file"] == str((out / "generated_predictions.jsonl").resolve())

    assert main(["eval", "history", f"results_db={db}", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(run["id"], run["command"], run["task"], run["metric"]) for run in runs] == [
        (result["run_id"], "predict", "bleu-rouge", "bleu-4")
    ]
    assert runs[0]["score"] == pytest.approx(result["overall"]["values"]["bleu-4"])


def no_weights(tmp_path: Path) -> str:
    """A folder a loader accepts but that holds no weights: these refusals must come before any load."""
    folder = tmp_path / "no-weights"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    return str(folder)


def test_data_without_answers_is_refused(demo_dir, tmp_path):
    cfg = load_config(
        model=no_weights(tmp_path),
        task="bleu-rouge",
        dataset=str(demo_dir / "c4_demo.jsonl"),
        max_samples=5,
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(
        DataError,
        match=r"has no conversation ending in an assistant answer to compare with; predict needs a supervised data set",
    ):
        evaluate(cfg, record=False, progress=False)


def test_existing_predictions_are_not_overwritten(tmp_path):
    data = write_alpaca(tmp_path / "qa.json", ROWS)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "generated_predictions.jsonl").write_text("{}\n")
    cfg = load_config(
        model=no_weights(tmp_path), task="bleu-rouge", dataset=str(data), output_dir=str(tmp_path / "out")
    )
    with pytest.raises(ConfigError, match=r"already exists; pass overwrite_output_dir=true to replace it"):
        evaluate(cfg, record=False, progress=False)
