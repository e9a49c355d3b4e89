"""``factory bench WORKLOAD against=llamafactory lf_env=DIR``: the same job through LLaMA-Factory, then ours.

LLaMA-Factory runs in its own virtual environment (``../shared/baselines/llamafactory-venv.sh DIR``
builds 0.9.5 for CPU), in a child process, from a YAML generated from our workload's config: the
same model folder, data sets, template, cutoff, batch, learning rate and schedule, method and
preference loss. Its training is timed the way it times itself (the Trainer's ``train_runtime`` and
``train_samples_per_second`` in ``all_results.json``; losses and reward accuracy from
``trainer_state.json``); its peak memory is the child's own high-water mark (``wait4``). Ours then
runs in a fresh process of its own, so neither run's memory counts in the other's, with an empty data
set cache, so nothing an earlier run computed (its reference log-probabilities) is read back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from factory.config import RunConfig
from factory.errors import ConfigError, FactoryError

LF_ENV_VARIABLE = "FACTORY_LF_ENV"
VENV_RECIPE = "bash ../shared/baselines/llamafactory-venv.sh DIR"

# Our stage -> LLaMA-Factory's stage and its preference loss (LF runs ORPO and SimPO inside its DPO stage).
_STAGES: dict[str, tuple[str, str | None]] = {
    "sft": ("sft", None),
    "pt": ("pt", None),
    "rm": ("rm", None),
    "kto": ("kto", None),
    "dpo": ("dpo", "sigmoid"),
    "orpo": ("dpo", "orpo"),
    "simpo": ("dpo", "simpo"),
}
_QUANTIZATION = {"bnb-4bit": 4, "bnb-8bit": 8}


def _unsupported(what: str, fix: str) -> ConfigError:
    return ConfigError(f"against=llamafactory has no LLaMA-Factory counterpart for {what}; {fix}")


def _model_folder(cfg: RunConfig) -> str:
    """The Hugging Face folder both tools load: an alias's converted folder, or the model path itself."""
    from factory.model.aliases import ALIASES, resolve_alias

    if cfg.model in ALIASES:
        return str(resolve_alias(cfg.model))
    if not (Path(cfg.model) / "config.json").is_file():
        raise _unsupported(
            f"model '{cfg.model}'", "give model= a local Hugging Face folder (with config.json) or an alias"
        )
    return str(Path(cfg.model).resolve())


def _method_keys(cfg: RunConfig) -> dict[str, Any]:
    if cfg.method == "lora":
        opts = cfg.options("lora")
        if opts.use_dora or opts.use_rslora or opts.modules_to_save:
            raise _unsupported("lora.use_dora, lora.use_rslora or lora.modules_to_save", "compare plain LoRA")
        target = opts.target if isinstance(opts.target, str) else ",".join(opts.target)
        return {
            "finetuning_type": "lora",
            "lora_rank": opts.rank,
            "lora_alpha": opts.scaling_alpha,
            "lora_dropout": opts.dropout,
            "lora_target": target,
        }
    if cfg.method == "full":
        return {"finetuning_type": "full"}
    if cfg.method == "freeze":
        opts = cfg.options("freeze")
        keys: dict[str, Any] = {
            "finetuning_type": "freeze",
            "freeze_trainable_layers": opts.layers,
            "freeze_trainable_modules": ",".join(opts.modules),
        }
        if opts.extra:
            keys["freeze_extra_modules"] = ",".join(opts.extra)
        return keys
    raise _unsupported(f"method={cfg.method}", "use method=lora, full or freeze")


def _stage_keys(cfg: RunConfig) -> dict[str, Any]:
    if cfg.stage not in _STAGES:
        raise _unsupported(f"stage={cfg.stage}", f"use one of {', '.join(_STAGES)}")
    stage, pref_loss = _STAGES[cfg.stage]
    keys: dict[str, Any] = {"stage": stage}
    if cfg.stage == "dpo":
        opts = cfg.options("dpo")
        keys.update(pref_beta=opts.beta, pref_loss=opts.loss, pref_ftx=opts.ftx)
    elif cfg.stage == "orpo":
        keys.update(pref_beta=cfg.options("orpo").beta, pref_loss=pref_loss)
    elif cfg.stage == "simpo":
        opts = cfg.options("simpo")
        keys.update(pref_beta=opts.beta, simpo_gamma=opts.gamma, pref_ftx=opts.ftx, pref_loss=pref_loss)
    elif cfg.stage == "kto":
        opts = cfg.options("kto")
        keys.update(
            pref_beta=opts.beta, kto_chosen_weight=opts.desirable_weight, kto_rejected_weight=opts.undesirable_weight
        )
    return keys


def llamafactory_yaml(cfg: RunConfig, output_dir: str) -> dict[str, Any]:
    """LLaMA-Factory's training YAML for the job ``cfg`` describes (keys of its 0.9.5 hparams dataclasses)."""
    from factory import hardware
    from factory.model.precision import resolve_precision

    if cfg.optimizer != "adamw":
        raise _unsupported(f"optimizer={cfg.optimizer}", "compare with optimizer=adamw")
    if cfg.quantization not in (None, *_QUANTIZATION):
        raise _unsupported(f"quantization={cfg.quantization}", f"use {' or '.join(_QUANTIZATION)}")
    if cfg.template == "auto":
        raise _unsupported("template=auto", "name the template (e.g. template=chatml)")
    precision = resolve_precision(cfg.precision)
    folder = _model_folder(cfg)
    if precision == "fp32":
        _check_fp32_counterpart(folder)
    job: dict[str, Any] = {
        "model_name_or_path": folder,
        **_stage_keys(cfg),
        "do_train": True,
        **_method_keys(cfg),
        "dataset": ",".join(cfg.datasets),
        "dataset_dir": str(Path(cfg.dataset_dir).resolve()) if cfg.dataset_dir else None,
        "template": cfg.template,
        "cutoff_len": cfg.cutoff_len,
        "max_samples": cfg.max_samples,
        "output_dir": output_dir,
        "overwrite_output_dir": True,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "no",
        "plot_loss": False,
        "report_to": "none",
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.num_epochs,
        "max_steps": cfg.max_steps,
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_ratio": cfg.warmup_ratio,
        "warmup_steps": cfg.warmup_steps,
        "weight_decay": cfg.weight_decay,
        "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": not hardware.cuda_devices(),
    }
    if cfg.gradient_checkpointing:  # LLaMA-Factory checkpoints by default (disable_gradient_checkpointing: false)
        job["gradient_checkpointing"] = True
    if cfg.quantization:
        job.update(quantization_bit=_QUANTIZATION[cfg.quantization], quantization_method="bnb")
    if not cfg.shuffle:  # both tools train on the rows in the data set's order, so their per-step losses pair up
        job["disable_shuffling"] = True
    if cfg.val_size:
        # The same rows held out (datasets' train_test_split, the same seed), never evaluated: both tools
        # train on the same examples and the clock sees training only.
        job.update(val_size=int(cfg.val_size) if cfg.val_size >= 1 else cfg.val_size, eval_strategy="no")
    return {key: value for key, value in job.items() if value is not None}


def _check_fp32_counterpart(folder: str) -> None:
    """Refuse an fp32 comparison that LLaMA-Factory would run in bf16.

    With neither ``bf16`` nor ``fp16``, LLaMA-Factory 0.9.5 computes in the dtype its
    ``infer_optim_dtype`` picks from the model's stored one: bf16 for a folder stored in bf16 (the
    converted SmolLM2 is) or with none recorded. Its run would then round as a bf16 run does and be
    compared with our fp32 one.
    """
    config = json.loads((Path(folder) / "config.json").read_text())
    stored = config.get("torch_dtype") or config.get("dtype")
    if stored != "float32":
        raise _unsupported(
            f"precision=fp32 with model '{folder}', stored in {stored or 'no recorded dtype'}",
            "LLaMA-Factory would load and compute it in bfloat16; compare with precision=bf16, "
            "or give a model folder saved in float32",
        )


def resolve_lf_env(value: str | None) -> Path:
    """The LLaMA-Factory environment: ``lf_env=DIR`` or $FACTORY_LF_ENV, holding ``bin/llamafactory-cli``."""
    value = value or os.environ.get(LF_ENV_VARIABLE)
    if not value:
        raise ConfigError(
            f"against=llamafactory needs LLaMA-Factory's environment: pass lf_env=DIR or set {LF_ENV_VARIABLE} "
            f"(build one with {VENV_RECIPE})"
        )
    folder = Path(value).expanduser()
    if not (folder / "bin" / "llamafactory-cli").is_file():
        raise ConfigError(f"lf_env '{value}' has no bin/llamafactory-cli; build LLaMA-Factory there with {VENV_RECIPE}")
    return folder


def _log_tail(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()] if log.is_file() else []
    return lines[-1].strip()[:300] if lines else "no output"


def run_llamafactory(job: dict[str, Any], lf_env: Path, workdir: Path) -> dict[str, Any]:
    """Train ``job`` with ``lf_env``'s ``llamafactory-cli`` in a child process; its figures as the benchmark reports them."""
    from factory.bench import reward_accuracy

    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "llamafactory.yaml"
    config.write_text(yaml.safe_dump(job, sort_keys=False))
    log = workdir / "llamafactory.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DISABLE_VERSION_CHECK": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "WANDB_DISABLED": "true",
        "VIRTUAL_ENV": str(lf_env),
        "PATH": f"{lf_env / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("PYTHONPATH", None)
    start = time.perf_counter()
    with log.open("wb") as sink:
        child = subprocess.Popen(
            [str(lf_env / "bin" / "llamafactory-cli"), "train", str(config)],
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise FactoryError(
            f"LLaMA-Factory's run failed with exit code {child.returncode} ({_log_tail(log)}); "
            f"its YAML is {config} and its log {log}"
        )
    out = Path(job["output_dir"])
    results_file, state_file = out / "all_results.json", out / "trainer_state.json"
    if not results_file.is_file():
        raise FactoryError(f"LLaMA-Factory finished but wrote no {results_file}; its log is {log}")
    results = json.loads(results_file.read_text())
    history = json.loads(state_file.read_text()).get("log_history", []) if state_file.is_file() else []
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {
        "tool": "LLaMA-Factory",
        "version": _lf_version(lf_env),
        "train_runtime": results.get("train_runtime"),
        "samples_per_second": results.get("train_samples_per_second"),
        "train_loss": results.get("train_loss"),
        "final_train_loss": losses[-1] if losses else None,
        "train_losses": losses,
        **reward_accuracy(history),
        "peak_rss_gb": round(usage.ru_maxrss / 1024**2, 3),  # kilobytes on Linux
        "wall_seconds": round(wall, 2),
        "yaml": job,
        "log": str(log),
    }


def _lf_version(lf_env: Path) -> str | None:
    found = sorted((lf_env / "lib").glob("python*/site-packages/llamafactory-*.dist-info"))
    return found[-1].name.removeprefix("llamafactory-").removesuffix(".dist-info") if found else None


def compare(result_lf: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Both runs' figures and the ratios: samples/s ours over theirs, peak RSS ours over theirs.

    Our samples/s is the benchmark's clock (first step to the end of the last, evaluation excluded);
    theirs is the Trainer's ``train_samples_per_second``, which starts where ours starts and ends
    after the last step (they run no evaluation here).
    """
    speed_lf, speed = result_lf.get("samples_per_second"), ours.get("samples_per_second")
    rss_lf, rss = result_lf.get("peak_rss_gb"), ours.get("peak_rss_gb")
    return {
        "speedup": round(speed / speed_lf, 3) if speed and speed_lf else None,
        "peak_rss_ratio": round(rss / rss_lf, 3) if rss and rss_lf else None,
        "wall_speedup": round(result_lf["wall_seconds"] / ours["wall_seconds"], 3)
        if result_lf.get("wall_seconds") and ours.get("wall_seconds")
        else None,
    }


_ROWS = (
    ("samples/s", "samples_per_second"),
    ("train seconds", "train_runtime"),
    ("wall seconds", "wall_seconds"),
    ("train loss (mean)", "train_loss"),
    ("final train loss", "final_train_loss"),
    ("reward accuracy (mean)", "reward_accuracy"),
    ("peak RSS (GB)", "peak_rss_gb"),
)


def side_by_side(result: dict[str, Any]) -> str:
    """The table ``factory bench ... against=llamafactory`` prints (of the median pair, with ``--repeat``)."""
    lf, ours, ratio = result["llamafactory"], result["factory"], result["ratio"]

    def cell(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    rows = [
        (label, cell(lf.get(key)), cell(ours.get(key if key != "train_runtime" else "train_seconds")))
        for label, key in _ROWS
        if lf.get(key) is not None or ours.get(key) is not None
    ]
    width = max(len(label) for label, _, _ in rows)
    lines = [
        f"{result['workload']}: LLaMA-Factory {lf.get('version') or ''} vs factory".rstrip(),
        f"{'':<{width}}  {'LLaMA-Factory':>14}  {'factory':>10}",
    ]
    lines += [f"{label:<{width}}  {a:>14}  {b:>10}" for label, a, b in rows]
    lines.append(
        f"speed-up {cell(ratio['speedup'])}x (samples/s), wall {cell(ratio['wall_speedup'])}x, "
        f"peak RSS {cell(ratio['peak_rss_ratio'])}x theirs"
    )
    if len(result.get("pairs", ())) > 1:
        speedups = ", ".join(f"{cell(pair['speedup'])}x" for pair in result["pairs"])
        lines.append(
            f"speed-up of each of the {len(result['pairs'])} pairs: {speedups}; the table is the median pair's"
        )
    return "\n".join(lines)


def run_against_llamafactory(
    workload: str,
    overrides: list[str],
    *,
    lf_env: str | None = None,
    dataset_dir: str | None = None,
    output: str | None = None,
    keep: str | None = None,
    repeat: int = 1,
) -> dict[str, Any]:
    """LLaMA-Factory on ``workload``'s job, then ours in a fresh process; both figures and the ratios.

    With ``repeat`` above 1 the pair runs that many times, one pair after the other, and the result is
    the pair with the median speed-up plus every pair's ratios (``pairs``): a shared VM drifts by ~10%
    within minutes, so the verdict is the median of ratios measured minutes apart, not one sample.
    ``keep``: a folder to keep LLaMA-Factory's YAML, log and outputs in (default: a temporary folder).
    """
    from factory.bench import _save, run_bench_repeated, workload_config

    if repeat < 1:
        raise ConfigError(f"--repeat {repeat} must be at least 1")
    env = resolve_lf_env(lf_env)
    cfg = workload_config(workload, overrides, dataset_dir=dataset_dir)
    llamafactory_yaml(cfg, "")  # what has no counterpart is refused before anything is written
    pairs: list[dict[str, Any]] = []
    for index in range(repeat):
        folder = Path(keep) / f"pair{index + 1}" if keep and repeat > 1 else Path(keep) if keep else None
        workdir = folder or Path(tempfile.mkdtemp(prefix="factory-bench-lf-"))
        job = llamafactory_yaml(cfg, str(workdir / "output"))
        theirs = run_llamafactory(job, env, workdir)  # on failure its log stays, and the error names it
        if folder is None:
            shutil.rmtree(workdir, ignore_errors=True)
            theirs.pop("log", None)
        pairs.append({"llamafactory": theirs})
        _save({"workload": workload, "overrides": overrides, "pairs": pairs}, output)  # kept should ours fail
        # Cold, as LLaMA-Factory computes its reference log-probabilities inside its steps on every run.
        ours = run_bench_repeated(workload, overrides, 1, dataset_dir=dataset_dir, cold=True)
        pairs[-1].update(factory=ours, ratio=compare(theirs, ours))
    median = sorted(pairs, key=lambda pair: pair["ratio"]["speedup"] or 0.0)[(repeat - 1) // 2]
    result = {"workload": workload, "overrides": overrides, **median}
    if repeat > 1:
        result["pairs"] = [
            {
                **pair["ratio"],
                "samples_per_second": [
                    pair["llamafactory"]["samples_per_second"],
                    pair["factory"]["samples_per_second"],
                ],
                "train_loss": [pair["llamafactory"]["train_loss"], pair["factory"]["train_loss"]],
                "peak_rss_gb": [pair["llamafactory"]["peak_rss_gb"], pair["factory"]["peak_rss_gb"]],
            }
            for pair in pairs
        ]
    _save(result, output)
    return result


def split_against(overrides: list[str]) -> tuple[str | None, str | None, list[str]]:
    """``against=`` and ``lf_env=`` taken out of ``factory bench``'s overrides (the rest are config keys)."""
    against = lf_env = None
    rest = []
    for item in overrides:
        key, _, value = item.partition("=")
        if key == "against":
            against = value
        elif key == "lf_env":
            lf_env = value
        else:
            rest.append(item)
    if against is not None and against != "llamafactory":
        raise ConfigError(f"against={against} is not a tool factory bench compares with; use against=llamafactory")
    if lf_env is not None and against is None:
        raise ConfigError("lf_env= is only read with against=llamafactory; add against=llamafactory or drop lf_env")
    return against, lf_env, rest
