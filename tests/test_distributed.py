"""Sharded data-parallel runs on CPU: DeepSpeed ZeRO-2 and ZeRO-3 in two processes (torchrun, gloo).

The oracle is a single-process run over the same data: two ranks of batch 2 see, step for step,
the four examples one process of batch 4 sees (accelerate hands consecutive batches of the one
shuffled order to the ranks), and the loss is a mean over the same tokens, so the losses and the
trained weights agree up to the order of floating-point sums. Resuming from the sharded
checkpoints must end exactly where the uninterrupted run ends (factory.testing.check_resume).
FSDP cannot run on CPU through accelerate (see factory.train.distributed): its refusal and its
wiring are tested instead.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from factory.api import finetune
from factory.config import load_config
from factory.errors import ConfigError
from factory.testing import check_resume
from factory.train.distributed import DEEPSPEED_PRESETS, check_distributed, trainer_settings

STEPS = 2


def _run(tiny: Path, demo: Path) -> list[str]:
    return [
        f"model={tiny}",
        "dataset=alpaca_en_demo",
        f"dataset_dir={demo}",
        "max_samples=32",
        "method=full",
        "precision=fp32",
        "logging_steps=1",
        "learning_rate=1e-3",
    ]


def _losses(metrics: dict) -> list[float]:
    return [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def single_process(tiny_causal_lm, demo_dir, tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("single") / "run"
    metrics = finetune(
        None,
        [
            *_run(tiny_causal_lm, demo_dir),
            "batch_size=4",
            f"max_steps={STEPS}",
            "sample_prompt=null",
            f"output_dir={out}",
        ],
    )
    return metrics, _weights(out)


@pytest.mark.e2e
@pytest.mark.parametrize("preset", ["zero2", "zero3"])
def test_deepspeed_in_two_processes_matches_one_and_resumes(preset, tiny_causal_lm, demo_dir, tmp_path, single_process):
    reference_metrics, reference = single_process
    metrics = check_resume(
        tmp_path, [*_run(tiny_causal_lm, demo_dir), "nproc=2", "batch_size=2", f"deepspeed={preset}"], steps=STEPS
    )
    straight = tmp_path / "straight"
    record = json.loads((straight / "factory_run.json").read_text())
    assert record["world_size"] == 2
    assert any(straight.glob(f"checkpoint-1/global_step1/*{'zero_pp_rank_1'}*"))  # rank 1 wrote its optimizer shard
    assert _losses(metrics) == pytest.approx(_losses(reference_metrics), abs=1e-5)
    trained, original = _weights(straight), _weights(tiny_causal_lm)
    if "lm_head.weight" in trained and "lm_head.weight" not in reference:  # a tied head written out: the embedding
        assert (trained.pop("lm_head.weight") == trained["model.embed_tokens.weight"]).all()
    assert trained.keys() == reference.keys()
    moved = max((trained[k] - original[k]).abs().max().item() for k in trained)
    off = max((trained[k] - reference[k]).abs().max().item() for k in trained)
    assert moved > 1e-4 and off < 1e-5, (moved, off)


@pytest.mark.e2e
def test_a_two_node_launch_with_torchrun_flags(tiny_causal_lm, demo_dir, tmp_path, single_process):
    """docs/distributed.md's multi-node command, with both nodes on this machine (one process each)."""
    _, reference = single_process
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "run"
    command = [
        *_run(tiny_causal_lm, demo_dir),
        "batch_size=2",
        f"max_steps={STEPS}",
        "sample_prompt=null",
        f"output_dir={out}",
        "deepspeed=zero2",
    ]
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node_rank",
                str(rank),
                "--nproc_per_node",
                "1",
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(port),
                "-m",
                "factory.cli",
                "finetune",
                *command,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ},
        )
        for rank in (0, 1)
    ]
    logs = [node.communicate(timeout=900)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert json.loads((out / "factory_run.json").read_text())["world_size"] == 2
    trained = _weights(out)
    assert max((trained[k] - reference[k]).abs().max().item() for k in trained) < 1e-5


def test_presets_leave_the_run_settings_to_the_trainer():
    for preset, config in DEEPSPEED_PRESETS.items():
        assert config["zero_optimization"]["stage"] == int(preset[-1])
        assert config["train_micro_batch_size_per_gpu"] == config["gradient_accumulation_steps"] == "auto"
    settings = trainer_settings(load_config(deepspeed="zero3"))
    settings["deepspeed"]["zero_optimization"]["stage"] = 0
    assert DEEPSPEED_PRESETS["zero3"]["zero_optimization"]["stage"] == 3  # each run gets its own copy


def test_fsdp_is_wired_as_fsdp2_and_refused_on_cpu(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    cfg = load_config(fsdp="full_shard auto_wrap")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **trainer_settings(cfg))
    assert args.fsdp_plugin_args["fsdp_version"] == 2
    assert FullyShardedDataParallelPlugin(**args.fsdp_plugin_args).fsdp_version == 2
    with pytest.raises(ConfigError) as err:
        check_distributed(cfg)
    assert str(err.value) == (
        "fsdp='full_shard auto_wrap' needs CUDA GPUs: on CPU accelerate runs plain DDP instead, without sharding; "
        "use deepspeed=zero3 to shard on CPU, or run on GPUs"
    )


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        (
            {"deepspeed": "zero4"},
            "deepspeed config 'zero4' does not exist; give the path of a DeepSpeed JSON file, or a preset (zero2, zero3)",
        ),
        (
            {"deepspeed": "zero2", "fsdp": "full_shard"},
            "deepspeed=zero2 and fsdp='full_shard' both shard the model; choose one",
        ),
    ],
)
def test_bad_distributed_settings_are_one_sentence(settings, says):
    with pytest.raises(ConfigError) as err:
        check_distributed(load_config(**settings))
    assert str(err.value) == says
