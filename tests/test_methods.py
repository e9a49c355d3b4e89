"""Every fine-tuning method of the training issue, through factory.finetune on a shared data set.

Each short SFT must lower the training loss, and its output must load back with the plain
libraries (PeftModel for adapters, transformers for whole models) and generate.
"""

from __future__ import annotations

import pytest
import torch

import factory

METHODS = {
    "full": {"method": "full"},
    "freeze": {"method": "freeze", "freeze": {"layers": 1}},
    "lora": {"method": "lora"},
    "dora": {"method": "dora"},
    "rslora": {"method": "rslora"},
    "pissa": {"method": "pissa"},
    "loraplus": {"method": "loraplus"},
    "galore": {"method": "full", "optimizer": "galore", "galore": {"rank": 8, "update_proj_gap": 5}},
    "badam": {"method": "full", "optimizer": "badam", "badam": {"switch_every": 5}},
}


@pytest.mark.parametrize("name", list(METHODS))
def test_method_learns_and_output_loads(name, sft_args, tiny_causal_lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / name
    metrics = factory.finetune(**sft_args(out, **METHODS[name]))
    values = [e["loss"] for e in metrics["log_history"] if "loss" in e]
    assert sum(values[-3:]) / 3 < 0.97 * values[0], values

    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    tokenizer = AutoTokenizer.from_pretrained(out)
    if (out / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, out)
        # The adapter really changes the model: its logits differ from the untouched base.
        ids = tokenizer("Give three tips", return_tensors="pt")
        with torch.no_grad(), model.disable_adapter():
            plain = model(**ids).logits
        assert not torch.allclose(model(**ids).logits, plain)
    else:
        model = AutoModelForCausalLM.from_pretrained(out)
    ids = tokenizer("Give three tips", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]
