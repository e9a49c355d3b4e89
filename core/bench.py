"""``factory bench``: run a named training workload end to end and measure it.

Reports samples/s, non-padding tokens/s, the share of computed tokens that are padding, peak
resident memory, time to first step, final train and held-out loss, and model FLOP utilisation
(MFU) against this machine's measured peak. Run one workload per process: peak memory is the
process's own high-water mark.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from factory.config import load_config
from factory.errors import ConfigError, FactoryError, did_you_mean, one_of

# The job LLaMA-Factory 0.9.5 was measured on (issue 9): LoRA r=8 on all linear layers, SmolLM2-135M-Instruct,
# alpaca_en_demo, chatml, cutoff 512, batch 4, bf16, 80 samples (20 steps of 4 when unpacked). 40 further rows
# are held out so every variant is judged on the same unseen data.
_BASE: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "dataset": "alpaca_en_demo",
    "template": "chatml",
    "cutoff_len": 512,
    "batch_size": 4,
    "precision": "bf16",
    "max_samples": 120,
    "val_size": 40,
    "num_epochs": 1,
    "learning_rate": 2e-4,
    "logging_steps": 1,
    "sample_prompt": None,
    "seed": 42,
}

# The preference job of issue 22: LoRA r=8 on all linear layers, the first 40 pairs of dpo_en_demo (kto_en_demo
# for kto), batch 2, cutoff 512, bf16, lr 5e-6, one epoch, no held-out split. SimPO's beta and gamma and
# ORPO's beta are named so the LLaMA-Factory run (pref_beta, simpo_gamma) gets the same values.
_PREFERENCE: dict[str, Any] = {
    **{k: v for k, v in _BASE.items() if k != "val_size"},
    "dataset": "dpo_en_demo",
    "batch_size": 2,
    "max_samples": 40,
    "learning_rate": 5e-6,
    "method": "lora",
    "lora": {"rank": 8, "target": "all"},
}

WORKLOADS: dict[str, dict[str, Any]] = {
    "lora": {**_BASE, "method": "lora", "lora": {"rank": 8, "target": "all"}},
    "qlora": {**_BASE, "method": "lora", "lora": {"rank": 8, "target": "all"}, "quantization": "bnb-4bit"},
    "full": {**_BASE, "method": "full", "learning_rate": 2e-5},
    "freeze": {**_BASE, "method": "freeze", "learning_rate": 2e-5},
    "galore": {**_BASE, "method": "full", "optimizer": "galore", "learning_rate": 2e-5},
    "badam": {**_BASE, "method": "full", "optimizer": "badam", "learning_rate": 2e-5},
    "dpo": {**_PREFERENCE, "stage": "dpo", "dpo": {"beta": 0.1, "loss": "sigmoid"}},
    "kto": {**_PREFERENCE, "stage": "kto", "dataset": "kto_en_demo", "kto": {"beta": 0.1}},
    "orpo": {**_PREFERENCE, "stage": "orpo", "orpo": {"beta": 0.1}},
    "simpo": {**_PREFERENCE, "stage": "simpo", "simpo": {"beta": 2.0, "gamma": 1.0}},
    "rm": {**_PREFERENCE, "stage": "rm"},
}

# The levers of issue 9, switched off: padded batches, the library's full-vocabulary loss, and
# frozen weights in fp32 under bf16 autocast (what LLaMA-Factory does).
BASELINE = {
    "padding_free": False,
    "chunked_loss": False,
    "fused_ops": False,
    "frozen_weights": "fp32",
    "kernel_cache_limit": False,
    "reuse_memory": False,
}


LEVERS = (
    "padding_free",
    "packing",
    "chunked_loss",
    "fused_ops",
    "frozen_weights",
    "kernel_cache_limit",
    "reuse_memory",
    "trim_memory",
    "torch_compile",
    "precision",
)


def default_dataset_dir() -> str | None:
    """The shared demo data beside the checkout (``../shared/data/llamafactory-demo``), if present."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = root.parent / "shared" / "data" / "llamafactory-demo"
        if candidate.is_dir():
            return str(candidate)
    return None


_PEAK_CACHE: dict[str, float] = {}


def measured_peak_flops(dtype: str = "bf16", seconds: float = 2.0) -> float:
    """The machine's peak as the best FLOP/s of a large square matmul in ``dtype`` on all torch threads.

    Vendor peak figures assume every core runs fused multiply-adds at full clock, which a
    2-vCPU (one physical core) VM never sees; a measured GEMM ceiling is the honest denominator.
    """
    if dtype in _PEAK_CACHE:
        return _PEAK_CACHE[dtype]
    import torch

    size = 2048
    kind = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    a @ b  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    _PEAK_CACHE[dtype] = best
    return best


def _linear_leaves(module: Any) -> list[Any]:
    """Matmul layers without sub-layers (a LoRA wrapper's base and adapters count, the wrapper not)."""
    return [
        m
        for m in module.modules()
        if hasattr(m, "in_features") and hasattr(m, "out_features") and not any(True for _ in m.children())
    ]


def _flops_per_token(model: Any, mean_length: float) -> float:
    """Matrix FLOPs a training token costs in this run, so MFU credits only work that is done.

    Forward: 2 x every matmul weight (quantized ones by their logical shape). Backward: 2 x the
    weights from the lowest layer that trains upward (input gradients) and 2 x the trained weights
    (their gradients). Attention over examples of ``mean_length`` tokens, causal: 2 x L x hidden per
    layer forward, twice that backward. The 6 x parameters convention would credit LoRA and
    freeze with gradients they never compute (freeze came out above 100%).
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    size = lambda m: m.in_features * m.out_features  # noqa: E731
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = list(getattr(decoder, "layers", []))
    first = next((i for i, layer in enumerate(layers) if any(p.requires_grad for p in layer.parameters())), len(layers))
    above = {id(m) for layer in layers[first:] for m in _linear_leaves(layer)}
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is not None:
        above.add(id(head))
    leaves = _linear_leaves(base)
    forward = sum(size(m) for m in leaves)
    backward = sum(size(m) for m in leaves if id(m) in above)
    trained = sum(size(m) for m in leaves if getattr(m, "weight", None) is not None and m.weight.requires_grad)
    cfg = base.config
    attention = 6 * len(layers) * cfg.hidden_size * mean_length * (1 if first < len(layers) else 1 / 3)
    return 2 * forward + 2 * backward + 2 * trained + attention


def _save(result: dict[str, Any], output: str | None) -> None:
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(result, indent=2))


def _check_workload(workload: str) -> None:
    if workload not in WORKLOADS:
        raise ConfigError(
            f"unknown workload '{workload}'{did_you_mean(workload, WORKLOADS)} (workloads: {one_of(WORKLOADS)})"
        )


# Figures of every run that ``--repeat`` lists beside the median run's.
REPEATED = (
    "samples_per_second",
    "tokens_per_second",
    "peak_rss_gb",
    "mfu",
    "final_train_loss",
    "eval_loss",
    "reference_seconds",
)


def run_bench_repeated(
    workload: str,
    overrides: list[str],
    repeat: int,
    *,
    dataset_dir: str | None = None,
    output: str | None = None,
    cold: bool = False,
) -> dict[str, Any]:
    """Run ``workload`` ``repeat`` times, each in a fresh process, and return the median run plus every run's figures.

    A shared VM's speed drifts by up to ~10% between runs of the same job, so one run is a sample,
    not a measurement. Each run gets its own process because peak memory is a process's high-water mark.
    ``cold``: each run gets an empty data set cache of its own, so what a stage computes once per data
    set and caches (the tokenized rows, a preference stage's reference log-probabilities) is computed
    in that run, as a user's first run computes it.
    """
    _check_workload(workload)
    if repeat < 1:
        raise ConfigError(f"--repeat {repeat} must be at least 1")
    runs = []
    with tempfile.TemporaryDirectory(prefix="factory-bench-") as tmp:
        for index in range(repeat):
            out = Path(tmp) / f"run{index}.json"
            command = [sys.executable, "-m", "factory.cli", "bench", workload, *overrides, "--output", str(out)]
            if dataset_dir:
                command += ["--dataset-dir", dataset_dir]
            env = {**os.environ, "HF_DATASETS_CACHE": str(Path(tmp) / f"datasets{index}")} if cold else None
            done = subprocess.run(command, stdout=subprocess.DEVNULL, env=env)
            if done.returncode != 0:
                raise FactoryError(
                    f"factory bench: run {index + 1} of {repeat} failed with exit code {done.returncode}; its error is printed above"
                )
            runs.append(json.loads(out.read_text()))
    median = sorted(runs, key=lambda run: run["samples_per_second"])[(repeat - 1) // 2]
    result = {**median, "repeats": {key: [run.get(key) for run in runs] for key in REPEATED}}  # mfu: sft/pt only
    _save(result, output)
    return result


def run_bench(
    workload: str, overrides: list[str], *, dataset_dir: str | None = None, output: str | None = None
) -> dict[str, Any]:
    """Run ``workload`` with ``overrides`` through its stage, as ``factory finetune`` would, and return (and optionally save) its measurements."""
    from factory.bench_profile import StepProfile

    _check_workload(workload)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="factory-bench-") as tmp:
        cfg = workload_config(workload, overrides, dataset_dir=dataset_dir, output_dir=str(Path(tmp) / "run"))
        manager = cfg.manager()
        from factory.api import check_training_selection
        from factory.train.run import observe_trainers

        check_training_selection(cfg, manager)
        profile = StepProfile()
        seen: dict[str, Any] = {}

        def observe(setup: Any, trainer: Any) -> None:
            from transformers import TrainerCallback

            profile.attach(trainer)
            seen["trainer"] = trainer
            seen["train_rows"] = len(setup.train_dataset)
            if cfg.stage in ("sft", "pt"):  # the FLOP count below is a causal LM's; preference stages run more passes
                lengths = [len(ids) for ids in setup.train_dataset["input_ids"]]
                seen["flops_per_token"] = _flops_per_token(setup.model, sum(lengths) / max(len(lengths), 1))

            class Clock(TrainerCallback):
                """Training time from the first step to the end of the last (evaluation and saving excluded)."""

                def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                    seen["train_start"] = time.perf_counter()

                def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                    now = time.perf_counter()
                    seen.setdefault("first_step", now - t0)
                    seen["train_seconds"] = now - seen["train_start"]

            trainer.add_callback(Clock())

        with observe_trainers(observe):
            metrics = manager.load("stages", cfg.stage).run(cfg, manager)
    wall = time.perf_counter() - t0
    trainer = seen["trainer"]
    real, computed = profile.real_tokens, profile.computed_tokens
    # A stage that computes its reference log-probabilities once before the first step (the trl plugin's
    # dpo and kto) reports how long that pass took (``reference_seconds``); it is training work, which
    # another tool does inside its steps, so it counts in the training time.
    before_steps = float(metrics.get("reference_seconds") or 0.0)
    train_seconds = seen["train_seconds"] + before_steps
    history = metrics.get("log_history", [])
    train_losses = [e["loss"] for e in history if "loss" in e]
    tokens_per_second = real / train_seconds
    kept = (metrics.get("data") or {}).get("train", {}).get("kept") if isinstance(metrics.get("data"), dict) else None
    samples = int((kept or seen["train_rows"]) * cfg.num_epochs)
    result = {
        "workload": workload,
        "stage": cfg.stage,
        "overrides": overrides,
        "levers": {k: getattr(cfg, k) for k in LEVERS},
        "samples": samples,
        "train_seconds": round(train_seconds, 2),
        "reference_seconds": round(before_steps, 2),
        "samples_per_second": round(samples / train_seconds, 3),
        # The library's own figure, timed as every Trainer times it (what LLaMA-Factory's all_results.json holds).
        "train_runtime": metrics.get("train_runtime"),
        "train_tokens": real,
        "tokens_per_second": round(tokens_per_second, 1),
        "padding_share": round(1 - real / max(computed, 1), 4),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
        "time_to_first_step": round(seen["first_step"], 2),
        "wall_seconds": round(wall, 2),
        "steps": trainer.state.global_step,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "train_loss": metrics.get("train_loss"),
        "train_losses": train_losses,
        "eval_loss": metrics.get("eval_loss"),
        **reward_accuracy(history, metrics),
        "profile": profile.report(train_seconds, before_steps),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()},
    }
    if "flops_per_token" in seen:
        peak = measured_peak_flops("bf16" if cfg.precision in ("bf16", "auto") else "fp32")
        result.update(
            {
                "mfu": round(tokens_per_second * seen["flops_per_token"] / peak, 4),
                "peak_flops": round(peak / 1e9, 1),
                "peak_flops_how": "best FLOP/s of a 2048x2048 matmul in the run's precision on all torch threads (GFLOP/s)",
                "flops_per_token": seen["flops_per_token"],
            }
        )
    _save(result, output)
    return result


# What a preference stage logs as the share of pairs it ranks right (TRL's DPO/CPO/ORPO, our rm).
ACCURACY_KEYS = ("rewards/accuracies", "accuracy")


def reward_accuracy(history: list[dict[str, Any]], metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The reward accuracy of a run's training: its mean over the epoch and the last logged value.

    With batches of two pairs one step's accuracy is 0, 0.5 or 1, so the mean over the epoch is the figure
    to compare: the stage's own (``train_rewards/accuracies``, ``train_accuracy``) where it reports one, else
    the mean of the logged steps. Stages that log none (sft, kto) give nothing.
    """
    for key in ACCURACY_KEYS:
        values = [e[key] for e in history if key in e and not any(k.startswith("eval_") for k in e)]
        epoch = (metrics or {}).get(f"train_{key}")
        if values or epoch is not None:
            mean = epoch if epoch is not None else sum(values) / len(values)
            return {"reward_accuracy": round(mean, 4), "final_reward_accuracy": values[-1] if values else None}
    return {}


def workload_config(
    workload: str, overrides: list[str], *, dataset_dir: str | None = None, output_dir: str | None = None
) -> Any:
    """The RunConfig of ``workload`` with ``overrides`` (``baseline=true`` turns every lever off)."""
    _check_workload(workload)
    base = dict(WORKLOADS[workload])
    if output_dir:
        base["output_dir"] = output_dir
    if "baseline=true" in overrides:
        overrides = [o for o in overrides if o != "baseline=true"]
        base.update(BASELINE)
    base.setdefault("dataset_dir", dataset_dir or default_dataset_dir())
    return load_config(base, overrides)
