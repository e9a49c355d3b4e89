"""The README's main job: `factory finetune` with no arguments, on the real SmolLM2 and the identity data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path_factory.mktemp("default-job")
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "finetune"], cwd=workdir, capture_output=True, text=True, timeout=1800
    )
    runs = sorted((workdir / "outputs").glob("sft-lora-*"))
    return proc, runs[-1] if runs else workdir


def test_default_job_tunes_the_identity(default_run):
    proc, out = default_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"outputs written to outputs/{out.name}" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    answer = metrics["sample"]["answer"]
    assert "Factory" in answer, answer
    assert f"> {answer}" in proc.stdout
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert losses[-1] < losses[0]
    assert (out / "adapter_config.json").is_file()


def test_chat_with_the_tuned_adapter_answers_with_its_identity(default_run, capsys):
    from factory.cli import main

    _, out = default_run
    code = main(
        ["chat", "model=smollm2-135m-instruct", f"adapter={out}", "max_new_tokens=48", "--prompt", "Who are you?"]
    )
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    assert "Factory" in printed.out, printed.out


def test_export_merges_the_adapter_for_plain_transformers(default_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.cli import main
    from factory.model.aliases import resolve_alias

    _, out = default_run
    merged = tmp_path / "merged"
    assert main(["export", "model=smollm2-135m-instruct", f"adapter={out}", f"output={merged}"]) == 0
    # Export merges in fp32; compare in fp32 (the cached base is bf16, which loads as bf16 by default).
    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    base = AutoModelForCausalLM.from_pretrained(resolve_alias("smollm2-135m-instruct"), dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, out)
    ids = tokenizer("Who are you?", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**ids).logits, reference(**ids).logits, atol=1e-3)
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
