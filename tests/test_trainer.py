"""FactoryTrainer's shortcuts give the library's own numbers: FLOP estimate, gradient clipping, adapter input casts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from factory.train.trainer import FactoryTrainer


@pytest.fixture
def trainer(tiny_causal_lm: Path, tmp_path: Path) -> FactoryTrainer:
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear"))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_grad_norm=0.05, report_to=[], bf16=True)
    return FactoryTrainer(model=model, args=args)


def _backward(model: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()


def test_flop_estimate_is_the_librarys(trainer):
    for length in (7, 31):
        inputs = {"input_ids": torch.zeros(2, length, dtype=torch.long)}
        assert trainer.floating_point_ops(inputs) == Trainer.floating_point_ops(trainer, inputs) > 0
    assert trainer.floating_point_ops({"pixel_values": torch.zeros(1, 3)}) == 0


def test_gradient_clipping_is_the_librarys(trainer):
    model = trainer.model
    for seed in (0, 1):  # the second call reuses the listed parameters with new gradients
        _backward(model, seed)
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        norm = trainer._clip_grad_norm(model)
        ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        for name, p in model.named_parameters():
            if name in grads:
                p.grad = grads[name].clone()
        reference = Trainer._clip_grad_norm(trainer, model)
        assert float(norm) == pytest.approx(float(reference), rel=1e-6) and float(norm) > 0.05  # it did clip
        for name, grad in ours.items():
            torch.testing.assert_close(grad, model.get_parameter(name).grad, rtol=0, atol=0)
            assert not torch.equal(grad, grads[name]) or not grad.any()


def test_adapter_input_casts_are_switched_off_and_restored(trainer):
    model = trainer.model
    layers = [m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert layers
    layers[0].cast_input_dtype_enabled = False  # one a user switched off stays off afterwards
    for _ in range(2):
        with trainer._adapter_inputs_uncast(model):
            assert not any(layer.cast_input_dtype_enabled for layer in layers)
        assert [layer.cast_input_dtype_enabled for layer in layers] == [False] + [True] * (len(layers) - 1)


def test_a_replaced_model_is_walked_afresh(trainer, tiny_causal_lm):
    first = trainer.floating_point_ops({"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    trainer.model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, num_hidden_layers=1)  # as model_init does
    second = trainer.floating_point_ops({"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    assert second == Trainer.floating_point_ops(trainer, {"input_ids": torch.zeros(1, 4, dtype=torch.long)}) < first


def test_a_trained_fp32_head_computes_in_bf16_under_mixed_precision_like_the_library(
    tiny_causal_lm, tmp_path, monkeypatch
):
    """Full fine-tuning: fp32 weights, bf16 autocast. The chunked loss's head matmuls run in bf16, as the library's
    head does inside the autocast forward, and give the library's loss and head gradient."""
    from factory.train import loss as loss_module

    seen = []
    real = loss_module._compute_dtype
    monkeypatch.setattr(
        loss_module, "_compute_dtype", lambda hidden, weight: seen.append(real(hidden, weight)) or seen[-1]
    )
    torch.manual_seed(0)
    ids = torch.randint(3, 200, (2, 24))
    labels = ids.clone()
    labels[:, :8] = -100
    results = []
    for chunked in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], bf16=True)
        trainer = FactoryTrainer(model=model, args=args, chunked_loss=chunked)
        model.train()
        loss = trainer.compute_loss(trainer.model, {"input_ids": ids, "labels": labels})
        loss.backward()
        results.append((loss.detach().float(), model.lm_head.weight.grad.clone()))
    assert seen == [torch.bfloat16]  # the chunked path ran, in bf16
    (ours, ours_grad), (ref, ref_grad) = results
    assert torch.allclose(ours, ref, rtol=1e-3), (ours, ref)
    assert torch.allclose(ours_grad, ref_grad, atol=1e-3, rtol=5e-2)
    assert ours_grad.abs().sum() > 0


def _batch_order(model: torch.nn.Module, tmp_path: Path, **settings: object) -> list[int]:
    """The rows a run's Trainer draws, in order, from a data set whose row i holds the value i."""
    from datasets import Dataset

    from factory.config import load_config
    from factory.train.run import training_arguments

    rows = Dataset.from_dict({"row": list(range(24))})
    args = training_arguments(load_config(batch_size=1, **settings), tmp_path, has_eval=False)
    trainer = FactoryTrainer(
        model=model, args=args, train_dataset=rows, data_collator=lambda batch: {"row": [r["row"] for r in batch]}
    )
    return [row for batch in trainer.get_train_dataloader() for row in batch["row"]]


def test_shuffle_false_trains_on_the_rows_in_the_data_sets_order(trainer, tmp_path):
    assert _batch_order(trainer.model, tmp_path, shuffle=False) == list(range(24))
    shuffled = _batch_order(trainer.model, tmp_path)
    assert sorted(shuffled) == list(range(24)) and shuffled != list(range(24))  # the default draws a permutation
    assert _batch_order(trainer.model, tmp_path) == shuffled  # seeded: the same permutation every run
    assert _batch_order(trainer.model, tmp_path, seed=7) != shuffled


def test_shuffle_false_on_a_transformers_without_sequential_sampling_is_one_sentence(monkeypatch):
    import dataclasses

    import transformers

    from factory.config import load_config
    from factory.errors import ConfigError
    from factory.train.preflight import check_training

    @dataclasses.dataclass
    class OldTrainingArguments:  # transformers before 5.2: no train_sampling_strategy
        output_dir: str = "out"

    check_training(load_config(shuffle=False))  # the installed transformers has it
    monkeypatch.setattr(transformers, "TrainingArguments", OldTrainingArguments)
    monkeypatch.setattr(transformers, "__version__", "4.57.1")
    with pytest.raises(ConfigError, match=r"shuffle: false needs transformers 5.2 or newer .* 4.57.1 is installed"):
        check_training(load_config(shuffle=False))
    check_training(load_config())  # shuffling needs nothing new
