"""``factory bench``: what it measures, on a tiny model (figures for the real workload live in docs/performance.md)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import factory
from factory.bench import run_bench, run_bench_repeated
from factory.errors import ConfigError, FactoryError
from factory.train import memory
from factory.train import run as run_module


def _bench(tiny_causal_lm, demo_dir, tmp_path, *extra: str) -> dict:
    overrides = [f"model={tiny_causal_lm}", "max_samples=24", "val_size=8", "cutoff_len=128", "template=chatml", *extra]
    return run_bench("lora", overrides, dataset_dir=str(demo_dir), output=str(tmp_path / "result.json"))


@pytest.fixture(scope="module")
def lora_bench(tiny_causal_lm, demo_dir, tmp_path_factory) -> tuple[dict, Path]:
    """One default lora bench run and the folder of its JSON, shared by the tests that only read its result."""
    folder = tmp_path_factory.mktemp("bench-lora")
    return _bench(tiny_causal_lm, demo_dir, folder), folder


def test_bench_reports_training_only_and_saves_json(lora_bench):
    result, folder = lora_bench
    assert json.loads((folder / "result.json").read_text()) == result
    assert result["samples"] == 16 and result["steps"] == 4  # 24 rows, 8 held out, batch 4
    assert result["padding_share"] == 0.0  # padding-free batches
    # Tokens are the training rows' only (the held-out rows go through the same collator afterwards).
    assert (
        16 * 20 < result["train_tokens"] <= 16 * 128
    )  # 16 training rows at cutoff 128; the 8 eval rows would exceed it
    assert result["tokens_per_second"] > 0 and result["train_seconds"] > 0
    assert result["peak_rss_gb"] > 0.1 and 0 < result["mfu"] < 1 and result["eval_loss"] > 0
    assert result["levers"]["padding_free"] is True and result["levers"]["fused_ops"] is True


def test_baseline_turns_the_levers_off(tiny_causal_lm, demo_dir, tmp_path):
    result = _bench(tiny_causal_lm, demo_dir, tmp_path, "baseline=true")
    assert result["levers"]["padding_free"] is False and result["levers"]["chunked_loss"] is False
    assert result["padding_share"] > 0  # padded batches of uneven rows


@pytest.fixture(scope="module")
def dpo_repeated(tiny_causal_lm, demo_dir, tmp_path_factory) -> tuple[dict, Path]:
    """Two fresh-process cold runs of a preference workload (``--repeat 2``), the JSON they were summed up in,
    and the reference caches they left in the user's data set cache."""
    from datasets import config

    output = tmp_path_factory.mktemp("bench-dpo") / "median.json"
    overrides = [f"model={tiny_causal_lm}", "max_samples=4", "cutoff_len=64"]
    caches = lambda: set(Path(config.HF_DATASETS_CACHE).rglob("factory-reference-*.npz"))  # noqa: E731
    before = caches()
    result = run_bench_repeated("dpo", overrides, 2, dataset_dir=str(demo_dir), output=str(output), cold=True)
    return result, output, caches() - before


def test_repeat_runs_fresh_processes_and_reports_the_median_run(dpo_repeated, tiny_causal_lm, demo_dir):
    result, output, left = dpo_repeated
    assert json.loads(output.read_text()) == result
    speeds = result["repeats"]["samples_per_second"]
    assert len(speeds) == 2 and result["samples_per_second"] == min(speeds)  # the lower median of two
    assert len(result["repeats"]["peak_rss_gb"]) == 2 and result["steps"] == 2
    # Cold: each run computed its reference pass and cached it in a data set cache of its own, not the user's.
    assert left == set() and all(seconds > 0 for seconds in result["repeats"]["reference_seconds"])

    overrides = [f"model={tiny_causal_lm}", "max_samples=12", "val_size=4", "cutoff_len=64", "template=chatml"]
    with pytest.raises(FactoryError, match="run 1 of 2 failed with exit code"):
        run_bench_repeated("lora", [*overrides, "no_such_key=1"], 2, dataset_dir=str(demo_dir))


def test_unknown_workload_is_one_sentence():
    with pytest.raises(ConfigError, match="unknown workload 'lorra'.*did you mean 'lora'"):
        run_bench("lorra", [])


def test_trim_memory_trims_after_every_step(tiny_causal_lm, demo_dir, tmp_path, monkeypatch):
    real = memory._malloc_trim()
    assert real is not None  # glibc on the machines we test on
    calls = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda: lambda pad: calls.append(real(pad)))
    factory.finetune(
        model=str(tiny_causal_lm),
        dataset="alpaca_en_demo",
        dataset_dir=str(demo_dir),
        max_samples=12,
        cutoff_len=64,
        batch_size=4,
        max_steps=3,
        method="lora",
        precision="fp32",
        sample_prompt=None,
        trim_memory=True,
        output_dir=str(tmp_path / "out"),
    )
    assert len(calls) == 3


def test_trim_memory_without_glibc_is_refused(monkeypatch):
    monkeypatch.setattr(memory, "_malloc_trim", lambda: None)
    with pytest.raises(ConfigError, match="trim_memory=true needs glibc"):
        memory.TrimHeap()


# Builds matmul kernels for 120 new shapes, as padding-free steps do, and prints how much the
# process grew (heap trimmed first, so only memory still held counts).
_SHAPE_GROWTH = """
import ctypes, sys, torch
from factory.train.memory import bound_kernel_caches
if sys.argv[1] == "bound":
    bound_kernel_caches()
def held_mb():
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
w = torch.randn(1536, 576, dtype=torch.bfloat16)
before = held_mb()
for rows in range(100, 1300, 10):
    x = torch.randn(rows, 576, dtype=torch.bfloat16, requires_grad=True)
    torch.nn.functional.linear(x, w).float().sum().backward()
print(held_mb() - before)
"""


def test_kernel_cache_limit_stops_memory_growing_with_each_new_shape(tmp_path):
    script = tmp_path / "growth.py"
    script.write_text(_SHAPE_GROWTH)
    env = {k: v for k, v in os.environ.items() if k not in memory.KERNEL_CACHE_LIMITS}
    growth = {
        mode: float(
            subprocess.run(
                [sys.executable, str(script), mode], env=env, capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("bound", "default")
    }
    assert growth["bound"] < growth["default"] / 2, growth


def test_kernel_cache_limit_is_set_before_the_model_loads_and_leaves_user_values(
    tiny_causal_lm, demo_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")  # the user's own size wins
    seen = {}
    real_load = run_module.load_model

    def load_model(*args, **kwargs):
        seen.update({k: os.environ.get(k) for k in memory.KERNEL_CACHE_LIMITS})
        return real_load(*args, **kwargs)

    monkeypatch.setattr(run_module, "load_model", load_model)
    factory.finetune(
        model=str(tiny_causal_lm),
        dataset="alpaca_en_demo",
        dataset_dir=str(demo_dir),
        max_samples=8,
        cutoff_len=64,
        batch_size=4,
        max_steps=1,
        method="lora",
        precision="fp32",
        sample_prompt=None,
        output_dir=str(tmp_path / "out"),
    )
    assert seen == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "7"}


# -- the profile ---------------------------------------------------------------------------------


def test_profile_splits_the_training_time_into_its_parts(lora_bench):
    profile = lora_bench[0]["profile"]
    seconds = profile["seconds"]
    assert set(seconds) == {"data", "forward", "backward", "grad_clip", "optimizer", "other"}
    assert all(seconds[part] > 0 for part in ("data", "forward", "backward", "optimizer"))
    assert abs(sum(profile["share"].values()) - 1) < 0.01  # the parts and "other" make up the training time
    assert profile["dominant"] == max(seconds, key=seconds.__getitem__)


def test_preference_workload_reports_reward_accuracy_and_its_logprob_passes(tiny_causal_lm, demo_dir, tmp_path):
    overrides = [f"model={tiny_causal_lm}", "max_samples=6", "cutoff_len=96"]
    result = run_bench("dpo", overrides, dataset_dir=str(demo_dir), output=str(tmp_path / "dpo.json"))
    assert result["stage"] == "dpo" and result["samples"] == 6 and result["steps"] == 3  # batch 2
    assert 0 <= result["reward_accuracy"] <= 1 and result["final_reward_accuracy"] in (0, 0.5, 1)
    assert result["train_tokens"] > 0 and "mfu" not in result  # the causal-LM FLOP count does not apply
    profile = result["profile"]
    assert profile["seconds"]["forward"] > 0 and profile["forward_parts"]["policy_logprobs"]["seconds"] > 0
    # The reference pass the stage runs once before its first step counts as training time.
    assert result["reference_seconds"] > 0
    assert profile["seconds"]["reference_before_steps"] == pytest.approx(result["reference_seconds"], abs=0.01)


# -- against LLaMA-Factory -------------------------------------------------------------------------

# A stand-in for LLaMA-Factory's CLI: keeps the YAML it was given, holds ~300 MB for a moment, and
# writes the result files LLaMA-Factory's Trainer writes (all_results.json, trainer_state.json).
_FAKE_LF = """#!{python}
import json, pathlib, sys, time, yaml
job = yaml.safe_load(open(sys.argv[2]))
assert sys.argv[1] == "train", sys.argv
pathlib.Path("{seen}").write_text(json.dumps(job))
if job.get("fail"):
    print("ValueError: Some keys are not used by the HfArgumentParser: ['fail']"); sys.exit(1)
held = b"x" * (300 * 2**20)
out = pathlib.Path(job["output_dir"]); out.mkdir(parents=True)
(out / "all_results.json").write_text(json.dumps({{"epoch": 1.0, "total_flos": 1.0, "train_loss": 0.69,
    "train_runtime": 40.0, "train_samples_per_second": 1.0, "train_steps_per_second": 0.5}}))
(out / "trainer_state.json").write_text(json.dumps({{"log_history": [
    {{"loss": 0.693, "rewards/accuracies": 0.0, "step": 1}}, {{"loss": 0.687, "rewards/accuracies": 1.0, "step": 2}},
    {{"train_runtime": 40.0, "train_loss": 0.69, "step": 2}}]}}))
"""


@pytest.fixture
def fake_lf(tmp_path):
    env = tmp_path / "lf-venv"
    (env / "bin").mkdir(parents=True)
    cli = env / "bin" / "llamafactory-cli"
    cli.write_text(_FAKE_LF.format(python=sys.executable, seen=tmp_path / "seen.json"))
    cli.chmod(0o755)
    return env


def test_llamafactory_results_are_parsed_and_compared(fake_lf, tmp_path, tiny_causal_lm, demo_dir):
    from factory.bench import workload_config
    from factory.bench_llamafactory import compare, llamafactory_yaml, run_llamafactory

    cfg = workload_config("dpo", [f"model={tiny_causal_lm}"], dataset_dir=str(demo_dir))
    job = llamafactory_yaml(cfg, str(tmp_path / "work" / "output"))
    theirs = run_llamafactory(job, fake_lf, tmp_path / "work")
    assert json.loads((tmp_path / "seen.json").read_text()) == job  # the YAML the CLI read is ours
    assert theirs["samples_per_second"] == 1.0 and theirs["train_runtime"] == 40.0 and theirs["train_loss"] == 0.69
    assert theirs["final_train_loss"] == 0.687 and theirs["reward_accuracy"] == 0.5
    assert 0.3 < theirs["peak_rss_gb"] < 2  # the child's own high-water mark, with its 300 MB
    ours = {"samples_per_second": 3.3, "peak_rss_gb": 0.9, "wall_seconds": 20.0}
    theirs["wall_seconds"] = 50.0
    assert compare(theirs, ours) == {
        "speedup": 3.3,
        "peak_rss_ratio": round(0.9 / theirs["peak_rss_gb"], 3),
        "wall_speedup": 2.5,
    }

    with pytest.raises(FactoryError, match=r"LLaMA-Factory's run failed with exit code 1 \(ValueError: Some keys"):
        run_llamafactory({**job, "fail": True}, fake_lf, tmp_path / "failed")


def test_one_command_runs_both_and_prints_the_table(fake_lf, tmp_path, tiny_causal_lm, demo_dir, capsys):
    from factory.cli import main

    args = [
        "bench",
        "lora",
        f"model={tiny_causal_lm}",
        "max_samples=12",
        "val_size=4",
        "cutoff_len=64",
        "shuffle=false",
        "against=llamafactory",
        f"lf_env={fake_lf}",
        "--dataset-dir",
        str(demo_dir),
        "--output",
        str(tmp_path / "both.json"),
        "--repeat",
        "2",
    ]
    assert main(args) == 0
    result = json.loads((tmp_path / "both.json").read_text())
    ours, theirs = result["factory"], result["llamafactory"]
    assert theirs["samples_per_second"] == 1.0 and theirs["peak_rss_gb"] > 0.3
    assert theirs["train_losses"] == [0.693, 0.687]  # every logged step's loss, to pair with ours
    assert ours["samples"] == 8 and ours["steps"] == 2 and "profile" in ours  # a real run of ours
    assert len(ours["train_losses"]) == 2 and ours["train_losses"][-1] == ours["final_train_loss"]
    assert result["ratio"]["speedup"] == round(ours["samples_per_second"] / 1.0, 3)
    # Two pairs, one after the other; with two, the median pair is the slower one.
    speedups = [pair["speedup"] for pair in result["pairs"]]
    assert len(speedups) == 2 and result["ratio"]["speedup"] == min(speedups)
    assert [pair["samples_per_second"][0] for pair in result["pairs"]] == [1.0, 1.0]
    job = json.loads((tmp_path / "seen.json").read_text())
    assert job["stage"] == "sft" and job["finetuning_type"] == "lora" and job["lora_target"] == "all"
    assert job["val_size"] == 4 and job["eval_strategy"] == "no" and job["max_samples"] == 12
    assert job["disable_shuffling"] is True  # both tools train on the rows in the same order
    table = capsys.readouterr().out
    assert "samples/s" in table and "peak RSS (GB)" in table and "speed-up" in table
    assert "speed-up of each of the 2 pairs" in table


def test_fp32_is_refused_where_llamafactory_would_compute_in_the_stored_bf16(tmp_path, tiny_causal_lm):
    from factory.bench import workload_config
    from factory.bench_llamafactory import llamafactory_yaml

    stored_bf16 = tmp_path / "bf16-model"
    shutil.copytree(tiny_causal_lm, stored_bf16)
    config = json.loads((stored_bf16 / "config.json").read_text())
    config.pop("torch_dtype", None)
    (stored_bf16 / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    with pytest.raises(
        ConfigError, match=r"precision=fp32 with model .* stored in bfloat16.* compare with precision=bf16"
    ):
        llamafactory_yaml(workload_config("dpo", [f"model={stored_bf16}", "precision=fp32"]), str(tmp_path / "out"))
    float32 = tmp_path / "fp32-model"
    shutil.copytree(tiny_causal_lm, float32)
    (float32 / "config.json").write_text(json.dumps({**config, "dtype": "float32"}))
    job = llamafactory_yaml(workload_config("dpo", [f"model={float32}", "precision=fp32"]), str(tmp_path / "out"))
    assert job["bf16"] is False and job["fp16"] is False  # a float32 folder is computed in float32 by both


def test_against_needs_the_environment(monkeypatch):
    from factory.bench_llamafactory import LF_ENV_VARIABLE, resolve_lf_env

    monkeypatch.delenv(LF_ENV_VARIABLE, raising=False)
    with pytest.raises(ConfigError, match="pass lf_env=DIR or set FACTORY_LF_ENV"):
        resolve_lf_env(None)


# -- the YAML we give LLaMA-Factory ------------------------------------------------------------------

# Keys of LLaMA-Factory 0.9.5's argument dataclasses (ModelArguments, DataArguments, FinetuningArguments and
# its Seq2SeqTrainingArguments) that the generated YAMLs use, as its examples/ write them (hiyouga/LLaMA-Factory,
# examples/train_lora/qwen3_lora_{dpo,kto,reward}.yaml at dc85995a, train_qlora/qwen3_lora_sft_otfq.yaml at
# 95ac3f23, train_full/qwen3_full_sft.yaml at 2083b8cd) and src/llamafactory/hparams/*.py define them.
LF_KEYS = {
    # model
    "model_name_or_path",
    "quantization_bit",
    "quantization_method",
    # method
    "stage",
    "do_train",
    "finetuning_type",
    "disable_shuffling",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target",
    "freeze_trainable_layers",
    "freeze_trainable_modules",
    "freeze_extra_modules",
    "pref_beta",
    "pref_loss",
    "pref_ftx",
    "simpo_gamma",
    "kto_chosen_weight",
    "kto_rejected_weight",
    # data
    "dataset",
    "dataset_dir",
    "template",
    "cutoff_len",
    "max_samples",
    "val_size",
    # output and training (the Trainer's arguments)
    "output_dir",
    "overwrite_output_dir",
    "logging_steps",
    "save_strategy",
    "plot_loss",
    "report_to",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
    "use_cpu",
    "gradient_checkpointing",
    "eval_strategy",
}
LF_WORKLOADS = ("lora", "qlora", "full", "freeze", "dpo", "kto", "orpo", "simpo", "rm")

# Parses each YAML with LLaMA-Factory's own argument parser (unknown keys and bad combinations raise).
_LF_PARSE = """
import json, sys
from llamafactory.hparams import get_train_args
for job in json.load(sys.stdin):
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(job)
    assert finetuning_args.stage == job["stage"] and training_args.per_device_train_batch_size == job["per_device_train_batch_size"]
print("ok")
"""


def _lf_env():
    from factory.bench_llamafactory import LF_ENV_VARIABLE

    candidate = Path(os.environ.get(LF_ENV_VARIABLE) or Path(__file__).resolve().parents[1].parent / "lf-venv")
    return candidate if (candidate / "bin" / "llamafactory-cli").is_file() else None


def _workload_yamls(tmp_path, model):
    from factory.bench import workload_config
    from factory.bench_llamafactory import llamafactory_yaml

    jobs = {
        name: llamafactory_yaml(workload_config(name, [f"model={model}"]), str(tmp_path / name))
        for name in LF_WORKLOADS
    }
    in_order = workload_config("dpo", [f"model={model}", "shuffle=false"])
    return {**jobs, "dpo, in order": llamafactory_yaml(in_order, str(tmp_path / "dpo-in-order"))}


def test_generated_yaml_is_llamafactory_yaml(tmp_path, tiny_causal_lm):
    jobs = _workload_yamls(tmp_path, tiny_causal_lm)
    for name, job in jobs.items():
        assert set(job) <= LF_KEYS, (name, set(job) - LF_KEYS)
    assert jobs["dpo"]["stage"] == "dpo" and jobs["dpo"]["pref_loss"] == "sigmoid" and jobs["dpo"]["pref_beta"] == 0.1
    assert jobs["orpo"]["stage"] == "dpo" and jobs["orpo"]["pref_loss"] == "orpo"
    assert (jobs["simpo"]["pref_loss"], jobs["simpo"]["pref_beta"], jobs["simpo"]["simpo_gamma"]) == ("simpo", 2.0, 1.0)
    assert jobs["kto"]["stage"] == "kto" and jobs["kto"]["dataset"] == "kto_en_demo"
    assert (
        jobs["rm"]["stage"] == "rm"
        and jobs["dpo"]["max_samples"] == 40
        and jobs["dpo"]["per_device_train_batch_size"] == 2
    )
    assert jobs["dpo, in order"]["disable_shuffling"] is True and "disable_shuffling" not in jobs["dpo"]
    assert jobs["qlora"]["quantization_bit"] == 4 and jobs["full"]["finetuning_type"] == "full"
    assert jobs["lora"]["lora_alpha"] == 16 and jobs["lora"]["lora_target"] == "all" and jobs["lora"]["bf16"] is True
    assert jobs["lora"]["model_name_or_path"] == str(Path(tiny_causal_lm).resolve())


def test_generated_yaml_parses_in_llamafactory(tmp_path, tiny_causal_lm):
    """Where LLaMA-Factory's environment is built (../lf-venv or $FACTORY_LF_ENV), its own parser reads every YAML."""
    env = _lf_env()
    if env is None:
        pytest.skip(
            "no LLaMA-Factory environment (bash ../shared/baselines/llamafactory-venv.sh ../lf-venv builds one)"
        )
    jobs = list(_workload_yamls(tmp_path, tiny_causal_lm).values())
    done = subprocess.run(
        [str(env / "bin" / "python"), "-c", _LF_PARSE],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        env={**os.environ, "DISABLE_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_a_fresh_process_run_of_a_preference_workload_has_no_mfu(dpo_repeated):
    """``--repeat`` and ``against=`` run ours through run_bench_repeated: a stage without an MFU figure must pass."""
    result, _, _ = dpo_repeated
    assert result["repeats"]["mfu"] == [None, None] and result["steps"] == 2 and "reward_accuracy" in result
