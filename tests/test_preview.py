"""``factory data preview``: examples with trained spans marked, token counts, length summary."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from factory.cli import main
from factory.config import load_config
from factory.data.tokenize import IGNORE_INDEX
from factory.preview import preview, render_tokens

ROOT = Path(__file__).resolve().parents[1]


def test_acceptance_command_from_the_repo_root() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "factory.cli",
            "data",
            "preview",
            "alpaca_en_demo",
            "dataset_dir=../shared/data/llamafactory-demo",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "alpaca_en_demo · supervised data" in out
    assert "example 3 ·" in out and "example 4" not in out
    # the first record, rendered by SmolLM2's template, with only the answer marked as trained
    assert (
        "<|im_start|>user\nDescribe a process of making crepes.<|im_end|>\n<|im_start|>assistant\n⟦Making crepes" in out
    )
    assert "⟦<|im_start|>" not in out
    assert "rows         999 (999 kept, 0 truncated, 0 dropped)" in out
    assert "tokens/row   min " in out and "median" in out
    assert "over cutoff  0.0% of rows are longer than cutoff_len 1024" in out


def test_preview_counts_and_cutoff_share(demo_dir, capsys) -> None:
    assert main(["data", "preview", "alpaca_en_demo", f"dataset_dir={demo_dir}", "-n", "1", "cutoff_len=128"]) == 0
    out = capsys.readouterr().out
    assert "example 1 · 128 tokens" in out and "example 2" not in out
    share = float(out.split("over cutoff")[1].split("%")[0])
    assert 50 < share < 100  # most alpaca rows are longer than 128 SmolLM2 tokens


@pytest.mark.parametrize(
    ("name", "expected"),
    [("kto_en_demo", "completion (desirable)"), ("dpo_en_demo", "rejected ("), ("c4_demo", "pretrain data")],
)
def test_preview_of_each_data_kind(demo_dir, capsys, name: str, expected: str) -> None:
    assert main(["data", "preview", f"dataset={name}", f"dataset_dir={demo_dir}", "-n", "1", "cutoff_len=256"]) == 0
    out = capsys.readouterr().out
    assert expected in out and "summary" in out and "⟦" in out


def test_styles_instead_of_markers_on_a_terminal(demo_dir) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, color_system="truecolor", width=120)
    stats = preview(load_config(None, ["dataset=identity", f"dataset_dir={demo_dir}"]), n=1, console=console)
    out = buffer.getvalue()
    assert "\x1b[" in out and "⟦" not in out
    assert stats.rows == 91 and stats.kept == 91


def test_render_tokens_marks_exactly_the_trained_tokens(smollm2_path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_path)
    ids = tok("Question? Answer here.<|im_end|>\n", add_special_tokens=False)["input_ids"]
    answer = len(tok("Question?", add_special_tokens=False)["input_ids"])
    labels = [IGNORE_INDEX] * answer + ids[answer:-1] + [IGNORE_INDEX]
    text = render_tokens(tok, ids, labels, styled=False)
    assert text.plain == "Question?⟦ Answer here.<|im_end|>⟧\n"


def test_bad_input_is_one_sentence(demo_dir, capsys) -> None:
    assert main(["data", "preview", "alpaca_en_demo", f"dataset_dir={demo_dir}", "template=chatmll"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "chatml" in err and "\n" not in err
    assert main(["data", "preview", "alpaca_en_demo", f"dataset_dir={demo_dir}", "-n", "-1"]) == 2
    assert "-n -1 is negative" in capsys.readouterr().err
    assert main(["data", "preview", "alpaca_en_demo", "model=/nonexistent/model"]) == 2
    assert "cannot load a tokenizer from model '/nonexistent/model'" in capsys.readouterr().err


def test_preview_reads_a_run_config_like_every_command(demo_dir, tmp_path, capsys) -> None:
    (tmp_path / "run.yaml").write_text(
        f"data:\n  dataset: alpaca_en_demo\n  dataset_dir: {demo_dir}\n  cutoff_len: 64\n"
    )
    assert main(["data", "preview", str(tmp_path / "run.yaml"), "template=chatml", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "alpaca_en_demo · supervised data · template chatml" in out and "cutoff_len 64" in out
