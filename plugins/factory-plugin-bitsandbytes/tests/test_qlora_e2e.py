"""Acceptance: QLoRA (4-bit NF4) SFT of SmolLM2-135M-Instruct on CPU; the adapter works on the unquantized base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

import factory
from factory.model.aliases import resolve_alias

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"


@pytest.mark.e2e
def test_qlora_nf4_sft_on_smollm2_trains_and_reloads_on_the_unquantized_base(tmp_path):
    out = tmp_path / "qlora"
    metrics = factory.finetune(
        model="smollm2-135m-instruct",
        quantization="bnb-4bit",
        bnb={"quant_type": "nf4"},
        method="lora",
        dataset="alpaca_en_demo",
        dataset_dir=str(DEMO_DIR),
        max_samples=8,
        cutoff_len=128,
        batch_size=2,
        max_steps=12,
        learning_rate=1e-3,
        logging_steps=1,
        output_dir=str(out),
        sample_prompt=None,
        seed=0,
    )
    losses = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < 0.85 * sum(losses[:4]) / 4, losses  # the same 8 examples, three times over

    path = resolve_alias("smollm2-135m-instruct")
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert not any("4bit" in type(m).__name__ for m in base.modules())
    tuned = PeftModel.from_pretrained(base, str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Give three tips for staying healthy."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        generated = tuned.generate(**prompt, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(generated[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(answer.split()) >= 5, answer
    with torch.no_grad():
        adapted = tuned(**prompt).logits
        with tuned.disable_adapter():
            plain = tuned(**prompt).logits
    assert (adapted - plain).abs().max() > 1e-2  # the trained adapter is really applied
