"""The chunked causal-LM loss equals transformers' own loss and gradients."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from factory.train import loss as loss_module
from factory.train.loss import chunked_causal_lm_loss, split_head


@pytest.fixture
def batch():
    torch.manual_seed(0)
    input_ids = torch.randint(3, 200, (3, 40))
    labels = input_ids.clone()
    labels[:, :15] = -100  # prompt
    labels[2, 30:] = -100  # padding of a shorter row
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 30:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("num_items", [None, 100])
@pytest.mark.parametrize("block_rows", [None, 3])
def test_loss_and_grads_equal_the_library(tiny_causal_lm, batch, num_items, block_rows, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    kwargs = {"num_items_in_batch": torch.tensor(num_items)} if num_items else {}
    reference = model(**batch, **kwargs).loss
    reference.backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    decoder, head = split_head(model)
    if block_rows:  # softmax blocks of 3 rows, not dividing the 7-token chunks
        monkeypatch.setattr(loss_module, "SOFTMAX_BLOCK_VALUES", block_rows * head.out_features)
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

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_causal_lm), LoraConfig(r=4, target_modules=["q_proj"])
    )
    decoder, head = split_head(model)
    assert head is model.get_base_model().lm_head
    assert any("lora_A" in name for name, _ in decoder.named_parameters())


def test_bf16_frozen_head_under_autocast_matches_the_library(tiny_causal_lm, batch):
    """The LoRA case: a frozen bf16 head under bf16 autocast; the hidden states' gradient matches the library's."""
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.bfloat16)
    model.requires_grad_(False)
    decoder, head = split_head(model)
    features = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        hidden = decoder(**features).last_hidden_state
    results = []
    for ours in (True, False):
        leaf = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if ours:
                loss = chunked_causal_lm_loss(leaf, head, batch["labels"], chunk_tokens=16)
            else:
                loss = model.loss_function(head(leaf), batch["labels"], vocab_size=model.config.vocab_size)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    (ours_loss, ours_grad), (ref_loss, ref_grad) = results
    assert torch.allclose(ours_loss, ref_loss, rtol=1e-3), (ours_loss, ref_loss)
    assert torch.allclose(ours_grad.float(), ref_grad.float(), atol=2e-4, rtol=2e-2)
    assert ours_grad.abs().sum() > 0


def test_a_trained_head_with_bias_gets_the_library_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :3] = -100
    loss = chunked_causal_lm_loss(hidden, head, labels, chunk_tokens=5)
    loss.backward()
    ours = (hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone())
    hidden.grad, head.weight.grad, head.bias.grad = None, None, None
    logits = head(hidden)[:, :-1].reshape(-1, 50)
    reference = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-6)
    for mine, theirs in zip(ours, (hidden.grad, head.weight.grad, head.bias.grad)):
        assert torch.allclose(mine, theirs, atol=1e-6)


def test_a_workspace_is_reused_across_calls_without_changing_the_loss(tiny_causal_lm, batch):
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    decoder, head = split_head(model)
    features = {k: v for k, v in batch.items() if k != "labels"}
    workspace = loss_module.LogitsWorkspace()
    buffers = []
    for rows in (3, 1, 3):  # a smaller batch between two larger ones: the buffer is reused, never shrunk
        part = {k: v[:rows] for k, v in features.items()}
        labels = batch["labels"][:rows]
        reference = model(**part, labels=labels).loss
        hidden = decoder(**part).last_hidden_state
        loss = chunked_causal_lm_loss(hidden, head, labels, chunk_tokens=7, workspace=workspace)
        hidden_again = decoder(**part).last_hidden_state
        fresh = chunked_causal_lm_loss(hidden_again, head, labels, chunk_tokens=7)
        assert torch.allclose(loss, reference, atol=1e-5) and torch.equal(loss, fresh)
        (grad,) = torch.autograd.grad(loss, hidden)
        (grad_fresh,) = torch.autograd.grad(fresh, hidden_again)
        assert torch.equal(grad, grad_fresh)
        buffers.append(workspace._buffers["logits"].data_ptr())
    assert len(set(buffers)) == 1


def test_a_trained_fp32_head_under_autocast_reuses_its_workspace_and_matches_the_library():
    """Full fine-tuning: an fp32 head under bf16 autocast. The head's bf16 copy and each chunk's weight-gradient
    product live in the workspace, and reusing it (a smaller call between two larger) changes no bit of the
    gradients; they match the library's head and cross-entropy under the same autocast."""
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    workspace = loss_module.LogitsWorkspace()
    kept = []
    for rows in (9, 4, 9):
        hidden = torch.randn(2, rows, 16)
        labels = torch.randint(0, 50, (2, rows))
        grads = []
        for space in (workspace, loss_module.LogitsWorkspace(), None):
            head.weight.grad = None
            leaf = hidden.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if space is None:
                    logits = head(leaf)[:, :-1].reshape(-1, 50).float()
                    loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1))
                else:
                    loss = chunked_causal_lm_loss(leaf, head, labels, chunk_tokens=5, workspace=space)
            loss.backward()
            grads.append((loss.detach(), leaf.grad, head.weight.grad))
        assert head.weight.grad.dtype == torch.float32
        (ours, fresh, library) = grads
        assert all(torch.equal(a, b) for a, b in zip(ours, fresh))
        for mine, theirs in zip(ours, library):
            assert torch.allclose(mine.float(), theirs.float(), atol=2e-3, rtol=2e-2)
        kept.append({name: t.data_ptr() for name, t in workspace._buffers.items()})
    assert set(kept[0]) == {"logits", "weight", "weight_grad"} and kept[0] == kept[1] == kept[2]


def test_the_chunked_loss_refuses_a_second_backward():
    """Its backward scales the saved gradients in place, so a retained graph cannot be run twice."""
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(1, 6, 16, requires_grad=True)
    loss = chunked_causal_lm_loss(hidden, head, torch.randint(0, 50, (1, 6)))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backpropagated once"):
        loss.backward()


@pytest.mark.parametrize("head_trains", [False, True])
@pytest.mark.parametrize(("block_rows", "temperature"), [(None, 1.0), (3, 0.7)])
def test_token_logprobs_and_grads_equal_log_softmax(head_trains, block_rows, temperature, monkeypatch):
    """Per-token log-probabilities (preference losses) equal log_softmax of full logits, and so do their gradients,
    for a frozen head (gradient computed in the forward) and a trained one with a bias (recomputed in backward)."""
    from factory.train.loss import chunked_token_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=head_trains)
    head.requires_grad_(head_trains)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    weights = torch.randn(23)  # any function of the log-probabilities: a weighted sum
    if block_rows:
        monkeypatch.setattr(loss_module, "SOFTMAX_BLOCK_VALUES", block_rows * 50)

    expected = torch.log_softmax(head(hidden) / temperature, -1).gather(1, targets[:, None])[:, 0]
    (expected * weights).sum().backward()
    want = [hidden.grad.clone()] + ([head.weight.grad.clone(), head.bias.grad.clone()] if head_trains else [])
    hidden.grad = None
    head.zero_grad()

    got = chunked_token_logprobs(hidden, head, targets, chunk_tokens=7, temperature=temperature)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)
    (got * weights).sum().backward()
    have = [hidden.grad] + ([head.weight.grad, head.bias.grad] if head_trains else [])
    for a, b in zip(have, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sequence_batch_packs_pairs_per_row_and_numbers_every_token():
    from factory.data.collator import sequence_batch

    rows = [
        [(0, [1, 2, 3], [-100, 2, 3]), (2, [1, 2, 4, 5], [-100, -100, 4, 5])],
        [(1, [6, 7], [-100, 7]), (3, [6, 8], [-100, 8])],
    ]
    packed = sequence_batch(rows, 0, packed=True)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 1, 2, 4, 5], [6, 7, 6, 8, 0, 0, 0]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 0, 1, 2]]
    assert packed["sequence_ids"].tolist() == [[0, 0, 0, 2, 2, 2, 2], [1, 1, 3, 3, -1, -1, -1]]
    assert packed["labels"].tolist() == [[-100, 2, 3, -100, -100, 4, 5], [-100, 7, -100, 8, -100, -100, -100]]
    padded = sequence_batch(rows, 0, packed=False)
    assert padded["sequence_ids"].tolist() == [[0, 0, 0, -1], [2, 2, 2, 2], [1, 1, -1, -1], [3, 3, -1, -1]]
    flat = sequence_batch(rows, 0, packed=True, flatten=True)
    assert flat["sequence_ids"].tolist() == [[0, 0, 0, 2, 2, 2, 2, 1, 1, 3, 3]]
    assert flat["cu_seq_lens_q"].tolist() == [0, 3, 7, 9, 11]
