"""Training end to end on a tiny random model: stages, methods, outputs, resume, export, torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import factory
from factory.errors import ConfigError


def losses(metrics: dict) -> list[float]:
    return [e["loss"] for e in metrics["log_history"] if "loss" in e]


def assert_learns(metrics: dict) -> None:
    values = losses(metrics)
    assert len(values) >= 10
    assert sum(values[-3:]) / 3 < 0.97 * values[0], values


def test_sft_full_writes_every_output(sft_args, tmp_path):
    out = tmp_path / "full"
    metrics = factory.finetune(**sft_args(out, method="full"))
    assert_learns(metrics)
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "factory_config.yaml",
        "metrics.json",
        "training_loss.png",
        "factory_run.json",
    ):
        assert (out / name).is_file(), name
    record = json.loads((out / "factory_run.json").read_text())
    assert record["factory"] == factory.__version__ and record["method"] == "full"
    assert "builtin-methods" in record["plugins"]
    saved = factory.load_config(out / "factory_config.yaml")
    assert saved.method == "full" and saved.max_steps == 30

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("Give three tips", return_tensors="pt")
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


def test_sft_freeze_changes_only_the_trained_layer(sft_args, tiny_causal_lm, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "freeze"
    metrics = factory.finetune(**sft_args(out, method="freeze", freeze={"layers": 1}))
    assert_learns(metrics)
    before, after = load_file(tiny_causal_lm / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.layers.1.") for name in changed)


def test_pretrain_stage(sft_args, tmp_path):
    metrics = factory.finetune(**sft_args(tmp_path / "pt", stage="pt", dataset="c4_demo", method="full"))
    assert_learns(metrics)


def test_refuses_non_empty_output_dir(sft_args, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something.txt").write_text("x")
    with pytest.raises(ConfigError, match="output_dir '.*busy' is not empty; pass overwrite_output_dir=true"):
        factory.finetune(**sft_args(out, method="full"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "factory.cli", "finetune", *args]


def _overrides(sft_args: Callable[..., dict], out: Path, **extra) -> list[str]:
    args = sft_args(out, method="full", save_steps=4, max_steps=12, **extra)
    return [f"{k}={'null' if v is None else v}" for k, v in args.items()]


def _final_loss(out: Path) -> float:
    history = json.loads((out / "metrics.json").read_text())["log_history"]
    return [e["loss"] for e in history if "loss" in e and e["step"] == 12][0]


def test_resume_after_sigkill_matches_uninterrupted_run(sft_args, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run(_cli(*_overrides(sft_args, straight)), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        _cli(*_overrides(sft_args, killed)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoint-8" / "trainer_state.json").is_file():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before the kill"

    resumed = subprocess.run(_cli(*_overrides(sft_args, killed, resume=True)), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads((killed / "factory_run.json").read_text())
    assert record["resumed_from"].endswith("checkpoint-8")
    assert abs(_final_loss(killed) - _final_loss(straight)) < 1e-4


def test_torchrun_two_processes_train_data_parallel(sft_args, tmp_path):
    single = factory.finetune(**sft_args(tmp_path / "one", method="full", max_steps=4))
    proc = subprocess.run(
        _cli(
            *[
                f"{k}={v}"
                for k, v in sft_args(
                    tmp_path / "two",
                    method="full",
                    max_steps=4,
                    nproc=2,
                    sample_prompt="null",
                ).items()
                if v is not None
            ]
        ),
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "factory_run.json").read_text())
    assert record["world_size"] == 2
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    # Each of the two ranks consumed its own batches: twice the tokens of the single process.
    seen_one = single["log_history"][-2]["num_input_tokens_seen"]
    seen_two = [e for e in two["log_history"] if "num_input_tokens_seen" in e][-1]["num_input_tokens_seen"]
    assert seen_two > 1.5 * seen_one


@pytest.mark.parametrize(
    "lever",
    [
        {"padding_free": False, "chunked_loss": False, "fused_ops": False},
        {"padding_free": True, "chunked_loss": False},
        {"padding_free": False, "chunked_loss": True},
        {"fused_ops": False},
    ],
)
def test_speed_levers_do_not_change_what_is_learned(sft_args, tmp_path, lever):
    """Padding-free batches and the chunked loss give the same losses as padded batches with the library loss."""
    common = dict(method="lora", max_steps=6, lora={"rank": 4})
    both = factory.finetune(**sft_args(tmp_path / "both", **common))
    plain = factory.finetune(**sft_args(tmp_path / "plain", **common, **lever))
    assert losses(plain) == pytest.approx(losses(both), abs=1e-4)


def _adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def test_adapter_in_a_training_run_continues_that_adapter(sft_args, tmp_path):
    """adapter=DIR trains the saved adapter further (its own rank, not lora.rank) instead of a fresh one."""
    factory.finetune(**sft_args(tmp_path / "first", method="lora", max_steps=6, lora={"rank": 4}))
    first = _adapter_tensors(tmp_path / "first")
    assert any(name.endswith("lora_B.weight") and t.abs().max() > 0 for name, t in first.items())

    # A learning rate far below fp32's resolution at any weight this adapter holds: it comes back bit for bit.
    still = dict(max_steps=1, learning_rate=1e-30, lora={"rank": 8})
    kept = factory.finetune(**sft_args(tmp_path / "kept", method="lora", adapter=str(tmp_path / "first"), **still))
    fresh = factory.finetune(**sft_args(tmp_path / "fresh", method="lora", **still))
    again = _adapter_tensors(tmp_path / "kept")
    assert again.keys() == first.keys()
    assert all(torch.equal(again[name], first[name]) for name in first)
    # A fresh adapter starts from lora_B = 0 and moved by at most ~1e-30.
    assert all(t.abs().max() < 1e-20 for name, t in _adapter_tensors(tmp_path / "fresh").items() if "lora_B" in name)
    # The trained adapter is in the forward pass: its first loss is not the fresh (zero-update) adapter's.
    assert losses(kept)[0] != pytest.approx(losses(fresh)[0], abs=1e-4)

    factory.finetune(**sft_args(tmp_path / "more", method="lora", max_steps=2, adapter=str(tmp_path / "first")))
    more = _adapter_tensors(tmp_path / "more")
    assert {name: t.shape for name, t in more.items()} == {name: t.shape for name, t in first.items()}
    assert not all(torch.equal(more[name], first[name]) for name in first)


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("full", "method=full cannot continue training the adapter"),
        ("dora", "was trained with method=lora, not method=dora; set method=lora"),
    ],
)
def test_adapter_a_method_cannot_continue_is_refused(sft_args, tmp_path, method, message):
    factory.finetune(**sft_args(tmp_path / "first", method="lora", max_steps=1, lora={"rank": 4}))
    with pytest.raises(ConfigError, match=message):
        factory.finetune(**sft_args(tmp_path / "next", method=method, max_steps=1, adapter=str(tmp_path / "first")))
    assert not (tmp_path / "next" / "adapter_model.safetensors").exists()


def test_a_quantized_checkpoint_without_its_quantizer_is_refused(sft_args, tiny_causal_lm, tmp_path):
    """transformers would load its quantized layers without the plugin's training guards: refused up front."""
    import shutil

    model = tmp_path / "quantized"
    shutil.copytree(tiny_causal_lm, model)
    config = json.loads((model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ConfigError, match=r"is a bitsandbytes-quantized checkpoint but quantization is not set; set quantization="
    ):
        factory.finetune(**sft_args(tmp_path / "out", model=str(model), method="lora", max_steps=1))
    assert not any((tmp_path / "out").glob("*"))


def test_a_diverging_run_stops_in_one_sentence_with_stop_on_nan(sft_args, tmp_path):
    args = sft_args(
        tmp_path / "nan",
        method="full",
        learning_rate=1e9,
        max_grad_norm=0.0,
        callbacks=["stop-on-nan"],
        max_steps=30,
    )
    with pytest.raises(
        factory.FactoryError, match=r"^the loss became (nan|inf) at step \d+; lower learning_rate \(now 1000000000.0\)"
    ):
        factory.finetune(**args)
