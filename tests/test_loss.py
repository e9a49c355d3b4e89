"""The chunked causal-LM loss equals transformers' own loss and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from factory.train.loss import chunked_causal_lm_loss, split_head


@pytest.fixture
def batch():
    torch.manual_seed(0)
    input_ids = torch.randint(3, 200, (3, 40))
    labels = input_ids.clone()
    labels[:, :15] = -100          # prompt
    labels[2, 30:] = -100          # padding of a shorter row
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 30:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("num_items", [None, 100])
def test_loss_and_grads_equal_the_library(tiny_causal_lm, batch, num_items):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    kwargs = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    reference = model(**batch, **kwargs).loss
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    decoder, head = split_head(model)
    features = {k: v for k, v in batch.items() if k != "labels"}
    hidden = decoder(**features).last_hidden_state
    loss = chunked_causal_lm_loss(hidden, head, batch["labels"], kwargs.get("num_items_in_batch"), chunk_tokens=7)
    loss.backward()
    assert torch.allclose(loss, reference, atol=1e-5), (loss, reference)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, ref_grads[name], atol=1e-5), name


def test_models_that_transform_logits_keep_the_library_loss(tiny_causal_lm):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    assert split_head(model) is not None
    model.config.final_logit_softcapping = 30.0
    assert split_head(model) is None


def test_peft_model_is_split_through_its_base(tiny_causal_lm):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), LoraConfig(r=4, target_modules=["q_proj"]))
    decoder, head = split_head(model)
    assert head is model.get_base_model().lm_head
    assert any("lora_A" in name for name, _ in decoder.named_parameters())
