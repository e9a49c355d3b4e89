"""The LoRA family on peft: one class whose variant (DoRA, rsLoRA, PiSSA, LoRA+) the method picks; OFT beside it.

Each registered name is an instance of :class:`LoraMethod` (or :class:`LoraPlusMethod`), so the
core calls ``apply``/``save``/``load``/``merge`` on it directly.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from typing import Any

import torch
from peft import LoraConfig, OFTConfig, PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.optimizers import create_loraplus_optimizer
from peft.utils.constants import EMBEDDING_LAYER_NAMES
from safetensors.torch import save_file

from factory.plugin_api import ConfigError, RunConfig, check_modules, matches, resolve_targets
from factory_plugin_peft.fused import fuse_lora_layers

log = logging.getLogger(__name__)

# Attribute of a PiSSA-initialised PeftModel holding its initial adapter weights: ``save`` needs
# them to turn the trained adapter into plain LoRA that fits the original (unmodified) base.
PISSA_INIT_ATTR = "factory_pissa_init"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else exc.__class__.__name__


def _tying(model: Any, names: list[str]) -> dict[str, Any]:
    """Keep tied input/output embeddings tied when the adapter trains one of them (SmolLM2 ties them).

    Without it peft trains a copy of the input embedding while the output head keeps the old
    matrix. peft gained ``ensure_weight_tying`` after 0.13, hence the feature check.
    """
    adapts_embedding = any(name.rsplit(".", 1)[-1] in EMBEDDING_LAYER_NAMES for name in names)
    tied = getattr(model.config, "tie_word_embeddings", False)
    if adapts_embedding and tied and "ensure_weight_tying" in LoraConfig.__dataclass_fields__:
        return {"ensure_weight_tying": True}
    return {}


class LoraMethod:
    """A LoRA-family method; ``dora``/``rslora``/``pissa`` force the matching peft setting."""

    section = "lora"

    def __init__(self, name: str, *, dora: bool = False, rslora: bool = False, pissa: bool = False) -> None:
        self.name = name
        self.dora = dora
        self.rslora = rslora
        self.pissa = pissa

    def peft_config(self, model: Any, cfg: RunConfig) -> PeftConfig:
        """The peft config for this method and the ``lora`` options, checked against the model."""
        opts = cfg.options("lora")
        targets = resolve_targets(model, opts.target, "lora.target")
        check_modules(model, opts.modules_to_save, "lora.modules_to_save")
        use_dora = self.dora or opts.use_dora
        if self.pissa and (use_dora or opts.modules_to_save):
            raise ConfigError(
                "method pissa cannot be combined with lora.use_dora or lora.modules_to_save, because peft converts "
                "a trained PiSSA adapter to plain LoRA matrices only; drop those options or use method lora"
            )
        init: bool | str = True
        if self.pissa:
            init = f"pissa_niter_{opts.pissa_niter}" if opts.pissa_niter else "pissa"
        return LoraConfig(
            **_tying(model, [*targets, *opts.modules_to_save]),
            task_type="CAUSAL_LM",
            r=opts.rank,
            lora_alpha=opts.scaling_alpha,
            lora_dropout=opts.dropout,
            target_modules=targets,
            modules_to_save=opts.modules_to_save or None,
            use_dora=use_dora,
            use_rslora=self.rslora or opts.use_rslora,
            init_lora_weights=init,
        )

    def apply(self, model: Any, cfg: RunConfig) -> Any:
        """Wrap ``model`` in a PeftModel; only the adapter (and modules_to_save) stays trainable."""
        config = self.peft_config(model, cfg)
        # Seed the adapter's initialisation from cfg.seed alone, without moving the global RNG: the
        # same config then gives the same adapter (and the same PiSSA residual) when a run resumes.
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            try:
                peft_model = get_peft_model(model, config)
            except ValueError as exc:
                raise ConfigError(
                    f"peft refused the {self.name} settings in section {self.section}: {_first_line(exc)}"
                ) from None
        if cfg.fused_ops:
            log.info("fused low-rank forwards on %d LoRA layers", fuse_lora_layers(peft_model))
        if self.pissa:
            initial = get_peft_model_state_dict(peft_model)
            setattr(peft_model, PISSA_INIT_ATTR, {k: v.detach().clone() for k, v in initial.items()})
        return peft_model

    def save(self, model: Any, output_dir: str) -> None:
        """Write a PEFT adapter folder that ``PeftModel.from_pretrained(original_base, output_dir)`` loads.

        PiSSA trains on a residual base (W minus its principal part), so its adapter is saved as
        the difference to its initial state: a plain LoRA of rank 2r that fits the original base.
        """
        initial = getattr(model, PISSA_INIT_ATTR, None)
        if initial is None:
            model.save_pretrained(output_dir)
            return
        with tempfile.TemporaryDirectory() as tmp:
            initial_dir = os.path.join(tmp, "pissa_init")
            os.makedirs(initial_dir)
            save_file(initial, os.path.join(initial_dir, "adapter_model.safetensors"))
            model.save_pretrained(output_dir, path_initial_model_for_weight_conversion=initial_dir)

    def load(self, model: Any, adapter_dir: str, cfg: RunConfig) -> Any:
        """Attach a saved adapter (frozen) for inference or export."""
        return self._attach(model, adapter_dir, cfg, trainable=False)

    def continue_from(self, model: Any, adapter_dir: str, cfg: RunConfig) -> Any:
        """Attach a saved adapter with its weights trainable: ``adapter: DIR`` in a training run.

        The adapter keeps its own rank, targets and scaling (the section ``lora`` shapes new adapters
        only). A saved PiSSA adapter is already plain LoRA on the original base, so it continues as one.
        """
        peft_model = self._attach(model, adapter_dir, cfg, trainable=True)
        log.info(
            "continuing the adapter in %s (its own shape and targets; section %s is not used)",
            adapter_dir,
            self.section,
        )
        if cfg.fused_ops:
            log.info("fused low-rank forwards on %d LoRA layers", fuse_lora_layers(peft_model))
        return peft_model

    def _attach(self, model: Any, adapter_dir: str, cfg: RunConfig, *, trainable: bool) -> Any:
        if not os.path.isfile(os.path.join(adapter_dir, "adapter_config.json")):
            raise ConfigError(
                f"adapter '{adapter_dir}' is not a PEFT adapter folder (it has no adapter_config.json); "
                f"give the output_dir of a {self.name} run"
            )
        try:
            return PeftModel.from_pretrained(model, adapter_dir, is_trainable=trainable)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ConfigError(
                f"adapter '{adapter_dir}' does not fit the model '{cfg.model}': {_first_line(exc)}"
            ) from None

    def merge(self, model: Any) -> Any:
        """Fold the adapter into the base weights and return the plain transformers model."""
        return model.merge_and_unload()


def _keep_groups(param_groups: list[dict[str, Any]], **_defaults: Any) -> list[dict[str, Any]]:
    """Stands in for an optimizer class: peft builds LoRA+ groups and the optimizer in one call,
    while factory lets the optimizer plugin build the optimizer, so only the groups are kept."""
    return param_groups


class LoraPlusMethod(LoraMethod):
    """LoRA+: the B matrices learn ``lora.loraplus_lr_ratio`` times faster than the A matrices."""

    def param_groups(self, model: Any, cfg: RunConfig) -> list[dict[str, Any]]:
        opts = cfg.options("lora")
        groups = create_loraplus_optimizer(
            model,
            _keep_groups,
            lr=cfg.learning_rate,
            loraplus_lr_ratio=opts.loraplus_lr_ratio,
            loraplus_lr_embedding=opts.loraplus_lr_embedding,
            loraplus_weight_decay=cfg.weight_decay,
        )
        return [group for group in groups if group["params"]]


class OftMethod(LoraMethod):
    """OFT: a learned block-diagonal orthogonal rotation of each target weight's input space (peft's OFT).

    Everything but the peft config (save, load, continue, merge) is the LoRA family's, which only
    goes through peft's generic ``PeftModel`` calls.
    """

    section = "oft"

    def peft_config(self, model: Any, cfg: RunConfig) -> PeftConfig:
        opts = cfg.options("oft")
        check_modules(model, opts.modules_to_save, "oft.modules_to_save")
        targets = resolve_targets(model, opts.target, "oft.target")
        # peft would silently change a block size (or count) that does not divide a layer's inputs
        key, value = ("oft.rank", opts.rank) if opts.rank else ("oft.block_size", opts.block_size)
        widths = {
            module.in_features
            for name, module in model.named_modules()
            if matches(name, targets) and hasattr(module, "in_features")
        }
        if any(width % value for width in widths):
            raise ConfigError(
                f"{key}={value} does not divide the input size of every target layer ({', '.join(map(str, sorted(widths)))}); "
                f"choose a divisor of {math.gcd(*widths)}"
            )
        return OFTConfig(
            task_type="CAUSAL_LM",
            r=opts.rank,
            oft_block_size=0 if opts.rank else opts.block_size,
            module_dropout=opts.dropout,
            target_modules=targets,
            modules_to_save=opts.modules_to_save or None,
            coft=opts.coft,
            eps=opts.eps,
            block_share=opts.block_share,
            use_cayley_neumann=opts.cayley_neumann,
            num_cayley_neumann_terms=opts.neumann_terms,
        )


LORA = LoraMethod("lora")
DORA = LoraMethod("dora", dora=True)
RSLORA = LoraMethod("rslora", rslora=True)
PISSA = LoraMethod("pissa", pissa=True)
LORAPLUS = LoraPlusMethod("loraplus")
OFT = OftMethod("oft")
