"""LLaMA-Factory configs, read unchanged: a table from each LLaMA-Factory key to factory's config.

A YAML file written for ``llamafactory-cli train|export|chat`` is recognised by the keys only
LLaMA-Factory uses (``model_name_or_path``, ``finetuning_type``) and translated before
validation, so ``factory finetune lf.yaml`` runs it and ``factory convert`` writes the native
form. Every key is an entry of :data:`TABLE`: it maps to a factory key (with a value
transform), is accepted as a documented no-op, or is refused in one sentence naming the key and
what to use instead. A key the table does not hold is refused the same way, so nothing is
silently dropped.

The keys are those of LLaMA-Factory's ``examples/`` (train_lora, train_qlora, train_full,
extras/*, merge_lora, inference) and the defaults those of
``src/llamafactory/hparams/finetuning_args.py``, read from hiyouga/LLaMA-Factory at the commits
listed in :data:`READ_FROM` (the fixtures under tests/fixtures/llamafactory/ record each file's).
docs/migrating.md lists the whole table; a test keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

READ_FROM = {
    "examples (qwen3_*, merge_lora, train_full, train_qlora)": "dc85995aba68a5d29cbe47951a843491c0795737",
    "examples (qwen3 inference, train_qlora otfq/bnb, lora ds3)": "95ac3f2373b82662c1bd855c284d3379e6a763d3",
    "src/llamafactory/hparams/finetuning_args.py": "00577a85775a2a78b14641ff8f68c58c6f46b027",
}

# Keys only LLaMA-Factory writes: one of them marks a config as LLaMA-Factory's.
MARKERS = ("model_name_or_path", "finetuning_type")


@dataclass(frozen=True)
class Refuse:
    """The key (or this value of it) has no counterpart: the rest of the sentence, naming what to use instead."""

    sentence: str


@dataclass(frozen=True)
class Ignore:
    """Accepted and without effect in factory, for the documented reason."""

    why: str


@dataclass(frozen=True)
class Several:
    """One LLaMA-Factory value that sets several factory keys."""

    keys: Mapping[str, Any]


NO_VALUE = object()


@dataclass(frozen=True)
class Rule:
    """What one LLaMA-Factory key becomes.

    ``to`` is the factory key (dotted into a plugin section); ``convert`` turns the value, or
    ``values`` looks it up (an entry may be a factory value, :class:`Refuse`, :class:`Ignore` or
    :class:`Several`). ``also`` is set too when the value is truthy (``neftune_noise_alpha`` adds
    the callback). ``refines`` are the values of ``to`` this key may replace (``pissa_init``
    turns method ``lora`` into ``pissa``). ``in_stage`` sends the value to another key in those
    factory stages, or refuses a value that does something (not 0 or false) there with a
    :class:`Refuse`; ``other`` lets values ``values`` does not list through to ``to``.
    ``default`` is LLaMA-Factory's default where it differs from factory's, applied when the key
    is absent and ``needs`` (the key that turns the feature on) is set.
    """

    to: str | None = None
    convert: Callable[[Any], Any] | None = None
    values: Mapping[Any, Any] | None = None
    also: Mapping[str, Any] = field(default_factory=dict)
    refines: tuple[Any, ...] = ()
    in_stage: Mapping[str, str | Refuse | None] = field(default_factory=dict)
    default: Any = NO_VALUE
    needs: str | None = None
    other: bool = False
    note: str = ""
    refuse: str | None = None
    ignore: str | None = None


def _shown(text: str) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Give a value transform the words docs/migrating.md's table shows for it (:func:`markdown`)."""

    def mark(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
        convert.shown = text  # type: ignore[attr-defined]
        return convert

    return mark


@_shown("comma list → list")
def _split(value: Any) -> Any:
    """LLaMA-Factory's comma lists (``dataset: identity,alpaca_en_demo``) as lists; one name stays a string."""
    if isinstance(value, str) and "," in value:
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


@_shown("comma list → list, `all` stays")
def _names(value: Any) -> Any:
    """A module list (``lora_target: q_proj,v_proj``); ``all`` stays ``all``."""
    value = _split(value)
    return value if value == "all" or isinstance(value, list) else [value]


@_shown("comma list → list")
def _modules(value: Any) -> Any:
    """freeze_trainable_modules: ``all`` too is a list, of the one name."""
    return _names(value) if value != "all" else ["all"]


@_shown("comma list → numbers")
def _floats(value: Any) -> Any:
    return [float(part) for part in value.split(",")] if isinstance(value, str) else value


@_shown("negated")
def _negated(value: Any) -> Any:
    return not value


@_shown("-1 (exact SVD) becomes 0")
def _pissa_iter(value: Any) -> Any:
    return 0 if value == -1 else value


@_shown("`N` → `NGB`: gigabytes per safetensors shard")
def _gigabytes(value: Any) -> Any:
    return f"{value}GB"


_SEVERAL_ADAPTERS = (
    "stacks several adapters, but factory loads one; merge the earlier ones into the model first "
    "with factory export and give the last as adapter"
)


@_shown(f'one adapter; a comma list is refused ("{_SEVERAL_ADAPTERS}")')
def _one_adapter(value: Any) -> Any:
    return Refuse(_SEVERAL_ADAPTERS) if isinstance(value, str) and "," in value else value


@_shown("`none` → `[]`; a name or list → that list")
def _report_to(value: Any) -> Any:
    items = [value] if isinstance(value, str) else list(value)
    return [item for item in items if item != "none"]


@_shown("a value below 1 (older examples write 0.1) → `warmup_ratio`, as transformers reads it")
def _warmup_steps(value: Any) -> Any:
    """transformers reads a warmup_steps below 1 as a ratio (older LLaMA-Factory examples write 0.1)."""
    return Several({"warmup_ratio": value}) if isinstance(value, float) and 0 < value < 1 else value


_REMOTE = "reads data sets from a hub repository, which factory does not; download the folder and give its local path"


@_shown(f'a `REMOTE:` hub folder is refused ("{_REMOTE}")')
def _dataset_dir(value: Any) -> Any:
    return Refuse(_REMOTE) if isinstance(value, str) and value.startswith("REMOTE:") else value


_CHECKPOINT = (
    "names a checkpoint, but factory resumes from the newest complete checkpoint of output_dir; "
    "set output_dir to that run's folder and resume: true"
)


@_shown(f'`true` → `resume: true`; a checkpoint path is refused ("{_CHECKPOINT}")')
def _resume(value: Any) -> Any:
    return True if value is True else Refuse(_CHECKPOINT)


# LLaMA-Factory's stock DeepSpeed files (examples/deepspeed/), by what factory makes of them when
# the file is not there: the ZeRO-2/3 ones are factory's presets (the same settings: every run value
# "auto", no offload); stage 0 is plain data parallelism; the others have no preset.
_STOCK_DEEPSPEED: dict[str, Any] = {
    "ds_z0_config.json": Ignore("ZeRO stage 0 is plain data parallelism, which factory runs with nproc: N"),
    "ds_z2_config.json": "zero2",
    "ds_z3_config.json": "zero3",
}


@_shown(
    "LLaMA-Factory's stock `examples/deepspeed/ds_z2_config.json` / `ds_z3_config.json` → factory's presets "
    "`zero2` / `zero3` (`ds_z0_config.json`: no effect) unless that file exists here; any other file is used as it is"
)
def _deepspeed(value: Any) -> Any:
    """Without LLaMA-Factory's checkout its stock files do not exist, and factory's presets hold the same settings."""
    path = Path(str(value)).expanduser()
    if path.name in _STOCK_DEEPSPEED and not path.is_file():
        return _STOCK_DEEPSPEED[path.name]
    return value


_ONLY_PREFERENCE = "only preference stages (dpo, kto, orpo, simpo) read it, as in LLaMA-Factory"
_NO_FTX = (
    "has no counterpart in this stage, whose factory options have no added SFT loss; drop it, "
    "or use stage dpo (dpo.ftx) or simpo (simpo.ftx)"
)
_OWN_REFERENCE = Refuse(
    "has no counterpart in stages kto and ppo, whose reference is the model before training; drop it, or use stage dpo"
)
_NO_CLIPPING = (
    "each weight steps during backward, so there is no whole gradient to clip: in LLaMA-Factory "
    "max_grad_norm does nothing then, in factory it must be 0"
)
_NO_WORKERS = "factory builds batches in the training process, so there are no loader workers to start"

# The table. Order matters where one key refines another's value (stage before pref_loss,
# finetuning_type before pissa_init, use_galore before galore_layerwise, use_apollo before
# apollo_layerwise): rules apply top-down.
TABLE: dict[str, Rule] = {
    # -- model ---------------------------------------------------------------------------------
    "model_name_or_path": Rule(to="model"),
    "model_revision": Rule(
        to="revision", other=True, values={"main": Ignore("the default branch, factory's default too")}
    ),
    "adapter_name_or_path": Rule(to="adapter", convert=_one_adapter),
    "trust_remote_code": Rule(to="trust_remote_code"),
    "template": Rule(to="template", other=True, values={"fewshot": Several({"eval_prompt": "raw"})}),
    "default_system": Rule(to="system"),
    "enable_thinking": Rule(to="enable_thinking"),
    "use_fast_tokenizer": Rule(
        values={
            True: Ignore("factory loads the fast tokenizer wherever the model has one"),
            False: Refuse("has no counterpart, because factory always loads the fast tokenizer; drop it"),
        }
    ),
    "quantization_bit": Rule(
        to="quantization",
        values={4: "bnb-4bit", 8: "bnb-8bit"},
        note="factory quantizes on the fly with bitsandbytes, or loads GPTQ/AWQ/AQLM models as they are",
    ),
    "quantization_method": Rule(
        values={
            "bnb": Ignore("bitsandbytes is what quantization_bit maps to"),
            "bitsandbytes": Ignore("bitsandbytes is what quantization_bit maps to"),
        }
    ),
    "quantization_type": Rule(to="bnb.quant_type"),
    "double_quantization": Rule(to="bnb.double_quant"),
    "rope_scaling": Rule(to="rope_scaling.type", also={"patches": ["rope-scaling"]}),
    "flash_attn": Rule(
        values={
            "auto": Ignore("factory picks the attention implementation (sdpa) itself"),
            "sdpa": Several({"attn_implementation": "sdpa"}),
            "disabled": Several({"attn_implementation": "eager"}),
            "fa2": Several({"patches": ["flash-attn"]}),
            "fa3": Several({"patches": ["flash-attn3"]}),
        }
    ),
    "shift_attn": Rule(values={True: Several({"patches": ["s2attn"]}), False: Ignore("the default")}),
    "enable_liger_kernel": Rule(values={True: Several({"patches": ["liger"]}), False: Ignore("the default")}),
    "use_unsloth": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse("has no counterpart in factory; use patches: [liger] for fused kernels"),
        }
    ),
    "disable_gradient_checkpointing": Rule(
        to="gradient_checkpointing",
        convert=_negated,
        default=False,
        note="LLaMA-Factory checkpoints gradients unless told not to",
    ),
    "gradient_checkpointing": Rule(to="gradient_checkpointing"),
    "infer_backend": Rule(to="engine", values={"huggingface": "transformers", "hf": "transformers", "vllm": "vllm"}),
    "vllm_enforce_eager": Rule(to="vllm.enforce_eager"),
    "vllm_maxlen": Rule(to="vllm.max_model_len"),
    "vllm_gpu_util": Rule(to="vllm.gpu_memory_utilization"),
    "vllm_max_lora_rank": Rule(to="vllm.max_lora_rank"),
    "image_max_pixels": Rule(
        refuse="has no counterpart, because factory trains text-only models; drop the image and video keys"
    ),
    "video_max_pixels": Rule(
        refuse="has no counterpart, because factory trains text-only models; drop the image and video keys"
    ),
    "freeze_vision_tower": Rule(refuse="has no counterpart, because factory trains text-only models; drop it"),
    "freeze_multi_modal_projector": Rule(refuse="has no counterpart, because factory trains text-only models; drop it"),
    "hf_hub_token": Rule(refuse="is not read from configs by factory; set the HF_TOKEN environment variable instead"),
    # -- stage and method ----------------------------------------------------------------------
    "stage": Rule(to="stage", values={s: s for s in ("pt", "sft", "rm", "ppo", "dpo", "kto")}),
    "pref_loss": Rule(
        to="stage",
        refines=("dpo",),
        values={
            "sigmoid": Ignore("plain DPO, factory's dpo.loss default"),
            "hinge": Several({"dpo.loss": "hinge"}),
            "ipo": Several({"dpo.loss": "ipo"}),
            "orpo": "orpo",
            "simpo": "simpo",
        },
    ),
    "do_train": Rule(
        values={
            True: Ignore("factory finetune always trains"),
            False: Refuse("has no counterpart in factory finetune; use factory eval or factory predict to evaluate"),
        }
    ),
    "do_eval": Rule(ignore="factory evaluates on the validation split whenever val_size or eval_dataset is set"),
    "do_predict": Rule(
        values={False: Ignore("the default"), True: Several({"task": "bleu-rouge"})},
        note="run the file with factory predict, which generates for eval_dataset and scores BLEU-4 "
        "and ROUGE; factory finetune refuses it",
    ),
    "predict_with_generate": Rule(ignore="factory predict always generates"),
    "finetuning_type": Rule(
        to="method", values={"lora": "lora", "full": "full", "freeze": "freeze", "oft": "oft"}, default="lora"
    ),
    "lora_rank": Rule(to="lora.rank"),
    "lora_alpha": Rule(to="lora.alpha", note="both default to 2 * rank"),
    "lora_dropout": Rule(to="lora.dropout"),
    "lora_target": Rule(to="lora.target", convert=_names),
    "additional_target": Rule(to="lora.modules_to_save", convert=_names),
    "use_dora": Rule(to="lora.use_dora"),
    "use_rslora": Rule(to="lora.use_rslora"),
    "pissa_init": Rule(to="method", refines=("lora",), values={True: "pissa", False: Ignore("the default")}),
    "pissa_iter": Rule(to="lora.pissa_niter", convert=_pissa_iter, default=16, needs="pissa_init"),
    "pissa_convert": Rule(ignore="factory always saves a PiSSA adapter converted to plain LoRA matrices"),
    "loraplus_lr_ratio": Rule(to="lora.loraplus_lr_ratio", also={"method": "loraplus"}, refines=("lora",)),
    "loraplus_lr_embedding": Rule(to="lora.loraplus_lr_embedding"),
    "create_new_adapter": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse(
                "has no counterpart; factory trains the adapter you give further, so leave out adapter to start a new one"
            ),
        }
    ),
    "oft_rank": Rule(to="oft.rank"),
    "oft_block_size": Rule(to="oft.block_size"),
    "oft_target": Rule(to="oft.target", convert=_names),
    "module_dropout": Rule(to="oft.dropout"),
    "freeze_trainable_layers": Rule(to="freeze.layers"),
    "freeze_trainable_modules": Rule(to="freeze.modules", convert=_modules),
    "freeze_extra_modules": Rule(to="freeze.extra", convert=_names),
    "use_llama_pro": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse(
                "trains a model already expanded by LLaMA-Factory's scripts/llama_pro.py, but factory expands and "
                "trains in one run; give the original model with method: llama-pro and llama_pro.expand: N"
            ),
        }
    ),
    "mixture_of_depths": Rule(
        refuse="has no counterpart, because no factory plugin converts a model to mixture-of-depths; drop it"
    ),
    "use_dft_loss": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse("has no counterpart, because factory has no DFT loss; drop it"),
        }
    ),
    "use_cce": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse("has no counterpart; use patches: [liger] for a fused linear cross-entropy"),
        }
    ),
    "pref_beta": Rule(
        in_stage={"dpo": "dpo.beta", "kto": "kto.beta", "orpo": "orpo.beta", "simpo": "simpo.beta"},
        note=_ONLY_PREFERENCE,
    ),
    "pref_ftx": Rule(
        in_stage={"dpo": "dpo.ftx", "simpo": "simpo.ftx", "kto": Refuse(_NO_FTX), "orpo": Refuse(_NO_FTX)},
        note=_ONLY_PREFERENCE,
    ),
    "simpo_gamma": Rule(in_stage={"simpo": "simpo.gamma"}, default=0.5, needs="pref_loss", note=_ONLY_PREFERENCE),
    "dpo_label_smoothing": Rule(
        in_stage={"dpo": "dpo.label_smoothing"}, note="only stage dpo reads it, as in LLaMA-Factory"
    ),
    "kto_chosen_weight": Rule(to="kto.desirable_weight"),
    "kto_rejected_weight": Rule(to="kto.undesirable_weight"),
    "ref_model": Rule(
        in_stage={"dpo": "dpo.ref_model", "kto": _OWN_REFERENCE, "ppo": _OWN_REFERENCE},
        note="orpo and simpo use no reference model, as in LLaMA-Factory",
    ),
    "ref_model_adapters": Rule(
        refuse="has no counterpart, because factory loads ref_model without adapters; merge the "
        "adapter into it with factory export and give the merged folder as ref_model"
    ),
    "ref_model_quantization_bit": Rule(
        refuse="has no counterpart, because factory loads ref_model unquantized; drop it"
    ),
    "reward_model": Rule(to="ppo.reward_model"),
    "reward_model_type": Rule(
        values={
            "lora": Ignore("factory reads the kind of the rm run's output folder itself"),
            "full": Ignore("factory reads the kind of the rm run's output folder itself"),
        }
    ),
    "ppo_epochs": Rule(to="ppo.epochs"),
    "ppo_target": Rule(to="ppo.target_kl"),
    # -- optimizers ----------------------------------------------------------------------------
    "optim": Rule(
        to="optimizer",
        values={
            "adamw_torch": "adamw",
            "adamw_hf": "adamw",
            "adamw_torch_fused": Several({"adamw.fused": True}),
        },
    ),
    "use_galore": Rule(to="optimizer", refines=("adamw",), values={True: "galore", False: Ignore("the default")}),
    "galore_layerwise": Rule(
        to="optimizer",
        refines=("galore",),
        also={"max_grad_norm": 0},
        note=_NO_CLIPPING,
        values={True: "galore-layerwise", False: Ignore("the default")},
    ),
    "galore_target": Rule(to="galore.target", convert=_names),
    "galore_rank": Rule(to="galore.rank"),
    "galore_update_interval": Rule(to="galore.update_proj_gap"),
    "galore_scale": Rule(to="galore.scale", default=2.0, needs="use_galore"),
    "galore_proj_type": Rule(to="galore.proj_type"),
    "use_apollo": Rule(to="optimizer", refines=("adamw",), values={True: "apollo", False: Ignore("the default")}),
    "apollo_layerwise": Rule(
        to="optimizer",
        refines=("apollo",),
        also={"max_grad_norm": 0},
        note=_NO_CLIPPING,
        values={True: "apollo-layerwise", False: Ignore("the default")},
    ),
    "apollo_target": Rule(to="apollo.target", convert=_names),
    "apollo_rank": Rule(to="apollo.rank"),
    "apollo_update_interval": Rule(to="apollo.update_proj_gap"),
    "apollo_scale": Rule(to="apollo.scale", default=32.0, needs="use_apollo"),
    "apollo_proj": Rule(to="apollo.proj"),
    "apollo_proj_type": Rule(to="apollo.proj_type"),
    "apollo_scale_type": Rule(to="apollo.scale_type"),
    "apollo_scale_front": Rule(to="apollo.scale_front"),
    "use_badam": Rule(to="optimizer", refines=("adamw",), values={True: "badam", False: Ignore("the default")}),
    "badam_mode": Rule(to="badam.mode"),
    "badam_start_block": Rule(to="badam.start_block"),
    "badam_switch_mode": Rule(to="badam.switch_mode"),
    "badam_switch_interval": Rule(to="badam.switch_every"),
    "badam_update_ratio": Rule(to="badam.update_ratio"),
    "badam_mask_mode": Rule(to="badam.mask_mode"),
    "badam_verbose": Rule(to="badam.verbose"),
    "use_adam_mini": Rule(to="optimizer", refines=("adamw",), values={True: "adam-mini", False: Ignore("the default")}),
    "use_muon": Rule(to="optimizer", refines=("adamw",), values={True: "muon", False: Ignore("the default")}),
    "neftune_noise_alpha": Rule(to="neftune.alpha", also={"callbacks": ["neftune"]}),
    # -- data ----------------------------------------------------------------------------------
    "dataset": Rule(to="dataset", convert=_split),
    "eval_dataset": Rule(to="eval_dataset", convert=_split),
    "dataset_dir": Rule(to="dataset_dir", convert=_dataset_dir),
    "cutoff_len": Rule(to="cutoff_len", default=2048),
    "max_samples": Rule(to="max_samples"),
    "val_size": Rule(to="val_size"),
    "streaming": Rule(to="streaming"),
    "packing": Rule(to="packing"),
    "mix_strategy": Rule(to="mix_strategy"),
    "interleave_probs": Rule(to="interleave_probs", convert=_floats),
    "mask_history": Rule(values={True: Several({"train_on": "last"}), False: Ignore("the default")}),
    "train_on_prompt": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse("has no counterpart, because factory trains on the answers only; drop it"),
        }
    ),
    "tokenized_path": Rule(refuse="has no counterpart, because factory tokenizes in each run; drop it"),
    "overwrite_cache": Rule(ignore="factory keeps no tokenized-data cache between runs to overwrite"),
    "preprocessing_num_workers": Rule(to="preprocessing_num_workers"),
    "dataloader_num_workers": Rule(ignore=_NO_WORKERS),
    # -- training ------------------------------------------------------------------------------
    "output_dir": Rule(to="output_dir"),
    "overwrite_output_dir": Rule(to="overwrite_output_dir"),
    "resume_from_checkpoint": Rule(to="resume", convert=_resume),
    "per_device_train_batch_size": Rule(to="batch_size", default=8, note="transformers' default"),
    "per_device_eval_batch_size": Rule(to="eval_batch_size"),
    "gradient_accumulation_steps": Rule(to="gradient_accumulation_steps"),
    "learning_rate": Rule(to="learning_rate", default=5e-5, note="transformers' default"),
    "num_train_epochs": Rule(to="num_epochs"),
    "max_steps": Rule(to="max_steps"),
    "lr_scheduler_type": Rule(to="lr_scheduler", default="linear", note="transformers' default"),
    "warmup_ratio": Rule(to="warmup_ratio"),
    "warmup_steps": Rule(to="warmup_steps", convert=_warmup_steps),
    "weight_decay": Rule(to="weight_decay"),
    "max_grad_norm": Rule(to="max_grad_norm"),
    "seed": Rule(to="seed"),
    "bf16": Rule(values={True: Several({"precision": "bf16"}), False: Ignore("the default")}),
    "fp16": Rule(values={True: Several({"precision": "fp16"}), False: Ignore("the default")}),
    "pure_bf16": Rule(
        values={True: Several({"precision": "bf16"}), False: Ignore("the default")},
        note="factory computes in bf16; full tuning keeps fp32 master weights",
    ),
    "logging_steps": Rule(to="logging_steps"),
    "save_steps": Rule(to="save_steps"),
    "save_total_limit": Rule(to="save_total_limit"),
    "save_only_model": Rule(
        ignore="factory's checkpoints always hold what resume needs, and its final save only the model"
    ),
    "eval_steps": Rule(to="eval_steps"),
    "eval_strategy": Rule(
        values={
            "steps": Ignore("factory evaluates every eval_steps"),
            "no": Ignore("factory evaluates only when eval_steps is set"),
        }
    ),
    "evaluation_strategy": Rule(
        values={
            "steps": Ignore("factory evaluates every eval_steps"),
            "no": Ignore("factory evaluates only when eval_steps is set"),
        }
    ),
    "plot_loss": Rule(ignore="factory writes the loss plot whenever the plots extra (matplotlib) is installed"),
    "report_to": Rule(to="report_to", convert=_report_to),
    "ddp_timeout": Rule(ignore="factory keeps torch's default process-group timeout"),
    "deepspeed": Rule(to="deepspeed", convert=_deepspeed),
    "fsdp": Rule(to="fsdp"),
    "ray_num_workers": Rule(
        refuse="has no counterpart, because factory does not run on Ray; use nproc: N (torchrun) instead"
    ),
    "fp8": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse("has no counterpart, because factory has no FP8 training; use precision: bf16"),
        }
    ),
    "fp8_backend": Rule(refuse="has no counterpart, because factory has no FP8 training; drop it"),
    "print_param_status": Rule(ignore="factory prints the trainable parameter count of every run"),
    # -- generation (chat, ppo) ----------------------------------------------------------------
    "max_new_tokens": Rule(to="max_new_tokens", in_stage={"ppo": "ppo.max_new_tokens"}),
    "temperature": Rule(to="temperature", in_stage={"ppo": "ppo.temperature"}),
    "top_p": Rule(to="top_p", in_stage={"ppo": "ppo.top_p"}),
    "top_k": Rule(
        in_stage={"ppo": "ppo.top_k"},
        other=True,
        values={0: Ignore("no top-k filtering, factory's default")},
        note="other values are refused outside ppo: factory's chat samples with temperature and top_p",
    ),
    # -- evaluation ----------------------------------------------------------------------------
    "task": Rule(
        values={
            "mmlu_test": Several({"task": "mmlu", "eval_split": "test"}),
            "cmmlu_test": Several({"task": "cmmlu", "eval_split": "test"}),
            "ceval_validation": Several({"task": "ceval", "eval_split": "val"}),
        }
    ),
    "task_dir": Rule(to="task_dir"),
    "n_shot": Rule(to="n_shot"),
    "lang": Rule(ignore="factory writes each benchmark's prompt in its own language"),
    "save_dir": Rule(ignore="factory records eval results in results_db (factory eval history)"),
    "batch_size": Rule(to="eval_batch_size", note="LLaMA-Factory's eval batch size"),
    "push_to_hub": Rule(
        values={
            False: Ignore("the default"),
            True: Refuse(
                "has no counterpart in factory finetune, which uploads nothing; upload the result with factory "
                "export and export_hub_repo: OWNER/NAME"
            ),
        }
    ),
    "hub_model_id": Rule(ignore="transformers reads it only with push_to_hub, which factory refuses"),
    # -- export (factory export) -----------------------------------------------------------------
    "export_dir": Rule(to="export_dir"),
    "export_size": Rule(to="export_max_shard_size", convert=_gigabytes),
    "export_device": Rule(
        values={
            "cpu": Ignore("factory merges on the CPU"),
            "auto": Ignore("factory merges on the CPU"),
        }
    ),
    "export_legacy_format": Rule(
        values={
            False: Ignore("factory writes safetensors"),
            True: Refuse("has no counterpart, because factory writes safetensors only; set it to false"),
        }
    ),
    "export_quantization_bit": Rule(to="gptq.bits", also={"quantization": "gptq"}),
    "export_quantization_dataset": Rule(to="gptq.calibration_dataset"),
    "export_quantization_nsamples": Rule(to="gptq.calibration_samples"),
    "export_hub_model_id": Rule(
        to="export_hub_repo", note="factory creates the repository private unless export_hub_private: false"
    ),
}


def is_llamafactory(data: Mapping[str, Any]) -> bool:
    """Whether ``data`` is a LLaMA-Factory config (it holds a key only LLaMA-Factory writes)."""
    return any(key in data for key in MARKERS)


def check_trains(data: Mapping[str, Any], source: str) -> None:
    """factory finetune's check: a LLaMA-Factory predict file (``do_predict: true``) is factory predict's to run."""
    if is_llamafactory(data) and data.get("do_predict") is True:
        then = "train with factory finetune without do_predict, then " if data.get("do_train") is True else ""
        raise ConfigError(
            f"LLaMA-Factory key 'do_predict: true' asks for generated predictions, which factory finetune does not make; "
            f"{then}run factory predict {source}"
        )


def translate(data: Mapping[str, Any]) -> dict[str, Any]:
    """The factory config (flat keys, plugin sections nested) of a LLaMA-Factory config."""
    return _Translation(data).config


class _Translation:
    def __init__(self, data: Mapping[str, Any]) -> None:
        unknown = next((key for key in data if key not in TABLE), None)
        if unknown is not None:
            raise ConfigError(
                f"LLaMA-Factory key '{unknown}' has no counterpart in factory's converter; "
                "remove it or write its factory equivalent (docs/migrating.md lists every mapped key)"
            )
        self.given = {key: value for key, value in data.items() if value is not None}  # null: LLaMA-Factory's default
        for key, rule in TABLE.items():
            if (
                key not in self.given
                and rule.default is not NO_VALUE
                and (rule.needs is None or self.given.get(rule.needs))
            ):
                self.given[key] = rule.default
        self.config: dict[str, Any] = {}
        self.owner: dict[str, str] = {}
        for key, rule in TABLE.items():
            if key in self.given:
                self._apply(key, rule, self.given[key])

    def _apply(self, key: str, rule: Rule, value: Any) -> None:
        shown = f"{key}: {_yaml(value)}"
        if rule.refuse is not None:
            raise ConfigError(f"LLaMA-Factory key '{key}' {rule.refuse}")
        if rule.ignore is not None:
            return
        target = rule.in_stage.get(self.config.get("stage", "sft"), rule.to) if rule.in_stage else rule.to
        if isinstance(target, Refuse):
            if value:
                raise ConfigError(f"LLaMA-Factory key '{shown}' {target.sentence}")
            return
        if rule.values is not None and _hashable(value) and value in rule.values:
            value = rule.values[value]
        elif rule.values is not None and not (rule.other and target is not None):
            valid = ", ".join(repr(v) for v in rule.values)
            why = f" ({rule.note})" if rule.note else ""
            raise ConfigError(f"LLaMA-Factory key '{shown}' has no counterpart in factory{why}; use one of {valid}")
        elif rule.convert is not None:
            value = rule.convert(value)
        if isinstance(value, Refuse):
            raise ConfigError(f"LLaMA-Factory key '{shown}' {value.sentence}")
        if isinstance(value, Ignore):
            return
        if isinstance(value, Several):
            for name, item in value.keys.items():
                self._put(name, item, key, rule.refines)
            return
        if target is None:
            return  # a stage's key in another stage (pref_beta in sft): LLaMA-Factory ignores it there too
        self._put(target, value, key, rule.refines)
        if value:
            for name, item in rule.also.items():
                self._put(name, item, key, rule.refines)

    def _put(self, target: str, value: Any, source: str, refines: tuple[Any, ...] = ()) -> None:
        *sections, name = target.split(".")
        node = self.config
        for section in sections:
            node = node.setdefault(section, {})
        if name not in node:
            node[name] = value
            self.owner[target] = source
            return
        old = node[name]
        if isinstance(old, list) and isinstance(value, list):
            node[name] = old + [item for item in value if item not in old]
        elif old == value:
            return
        elif refines and old in refines:
            node[name] = value
            self.owner[target] = source
        else:
            raise ConfigError(
                f"LLaMA-Factory keys '{self.owner[target]}' and '{source}' both set factory's {target} "
                f"({old!r} and {value!r}); keep one"
            )


def _yaml(value: Any) -> str:
    """A value as the YAML file spells it (``true``, not ``True``)."""
    return {True: "true", False: "false"}.get(value, str(value)) if isinstance(value, bool) else str(value)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


# -- docs/migrating.md's table, generated from TABLE ------------------------------------------------

GENERATED_START = "<!-- generated from core/lf_compat.py by factory.lf_compat.markdown(); tests/test_lf_compat.py keeps it in sync -->\n"
GENERATED_END = "<!-- end of generated table -->"


def _shown_value(value: Any) -> str:
    """What one entry of ``values`` does, in the table's words."""
    if isinstance(value, Refuse):
        return f'refused: "{value.sentence}"'
    if isinstance(value, Ignore):
        return f"accepted, no effect: {value.why}"
    if isinstance(value, Several):
        return ", ".join(f"`{name}: {_yaml(item)}`" for name, item in value.keys.items())
    return f"`{_yaml(value)}`"


def _row(key: str, rule: Rule) -> str:
    if rule.refuse is not None:
        return f'| `{key}` | refused | "{rule.refuse}" |'
    if rule.ignore is not None:
        return f"| `{key}` | accepted, no effect | {rule.ignore} |"
    targets = [f"`{rule.to}`"] if rule.to else []
    notes = []
    refused: dict[str, list[str]] = {}
    for stage, target in rule.in_stage.items():
        if isinstance(target, Refuse):
            refused.setdefault(target.sentence, []).append(stage)
        elif target is not None:
            targets.append(f"`{target}` (stage {stage})")
    notes += [
        f'refused in stage {", ".join(stages)} unless 0, false or empty ("{sentence}")'
        for sentence, stages in refused.items()
    ]
    if rule.values is not None:
        notes += [f"`{_yaml(value)}` → {_shown_value(result)}" for value, result in rule.values.items()]
        if rule.other:
            notes.append("other values pass through")
    if rule.convert is not None:
        notes.append(getattr(rule.convert, "shown", "converted"))
    if rule.default is not NO_VALUE:
        notes.append(
            f"LLaMA-Factory's default `{_yaml(rule.default)}` applies when absent"
            + (f" (with `{rule.needs}`)" if rule.needs else "")
        )
    notes += [f"also sets `{name}: {_yaml(item)}`" for name, item in rule.also.items()]
    notes += [f"replaces `{_yaml(old)}` set by an earlier key" for old in rule.refines]
    if rule.note:
        notes.append(rule.note)
    return f"| `{key}` | {', '.join(targets) or 'see notes'} | {'; '.join(notes)} |"


def markdown() -> str:
    """The key table of docs/migrating.md: each LLaMA-Factory key, the factory key it sets, and how."""
    lines = ["| LLaMA-Factory key | factory | notes |", "| --- | --- | --- |"]
    lines += [_row(key, rule) for key, rule in TABLE.items()]
    return "\n".join(lines) + "\n"


def write_migrating_guide(path: str) -> bool:
    """Regenerate the key table in the migration guide at ``path``; returns whether it changed (``nox -s docs``)."""
    guide = Path(path)
    text = guide.read_text(encoding="utf-8")
    start = text.index(GENERATED_START) + len(GENERATED_START)
    end = text.index(GENERATED_END)
    updated = text[:start] + markdown() + text[end:]
    guide.write_text(updated, encoding="utf-8")
    return updated != text
