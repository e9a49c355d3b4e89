"""A scalar head on a causal LM's decoder: the reward model (rm) and PPO's value model.

Written here because neither library offers it for an already-loaded model: transformers'
``AutoModelForSequenceClassification`` loads a second architecture from disk (losing the
loader pipeline's patches, quantization and adapter), and TRL 1.x removed its
``AutoModelForCausalLMWithValueHead``. The head reads the decoder's last hidden states and
skips the LM head, so scoring never builds vocabulary-sized logits.

An rm output folder holds what the method saves (a PEFT adapter or whole weights) plus
``value_head.safetensors``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers.modeling_outputs import SequenceClassifierOutputWithPast

from factory.plugin_api import ConfigError

HEAD_FILE = "value_head.safetensors"


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def decoder_of(model: Any) -> Any:
    """The transformer body under the LM head (``LlamaModel`` of a ``LlamaForCausalLM``), adapters included."""
    base = model.get_base_model() if is_peft(model) else model
    return base.base_model


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended token, for right- and left-padded rows alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask * positions).argmax(dim=1)


def new_head(model: Any) -> torch.nn.Linear:
    """A head whose first scores are all near 0 (loss log 2), yet not tied, so an untrained head ranks at chance.

    The usual initialisations project the decoder's large hidden activations (norms of tens) to
    rewards of order 1 that say nothing, and the first steps spend themselves undoing that noise.
    """
    hidden = model.config.get_text_config().hidden_size
    head = torch.nn.Linear(hidden, 1, dtype=torch.float32, device=model.device)
    torch.nn.init.normal_(head.weight, std=1e-4)
    torch.nn.init.zeros_(head.bias)
    return head


def tied_duplicates(module: torch.nn.Module) -> list[str]:
    """State-dict names whose tensor is an earlier name's (tied embeddings): left out of checkpoints."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    duplicates = []
    for name, tensor in module.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            duplicates.append(name)
        seen.add(key)
    return duplicates


class CheckpointableWrapper(torch.nn.Module):
    """A module around a causal LM that the Trainer checkpoints as a plain state dict.

    The Trainer reads ``_keys_to_ignore_on_save`` after loading a checkpoint: the tied copies left
    out are expected missing, and ``tie_weights`` re-ties them.
    """

    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        return tied_duplicates(self)

    def tie_weights(self) -> None:
        for module in self.children():
            if hasattr(module, "tie_weights"):
                module.tie_weights()


class DedupedCheckpoints:
    """A Trainer mixin: checkpoints of a wrapper model (not a PreTrainedModel) hold its state dict, tied weights once.

    The Trainer saves such models with ``safetensors.save_file``, which refuses tensors sharing
    memory (tied embeddings); see :class:`CheckpointableWrapper` for the way back.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is None:
            skip = set(tied_duplicates(self.model))
            state_dict = {name: t.contiguous() for name, t in self.model.state_dict().items() if name not in skip}
        super()._save(output_dir, state_dict)


class ValueHeadModel(CheckpointableWrapper):
    """``model`` (a causal LM, maybe a PeftModel) with a linear head giving one scalar per position.

    ``adapter`` names the PEFT adapter to activate for this head when several share one base
    (PPO); ``None`` uses whatever is active.
    """

    def __init__(self, model: Any, head: torch.nn.Linear | None = None, adapter: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.v_head = head if head is not None else new_head(model)
        self.adapter = adapter
        # TRL's RewardTrainer checks num_labels == 1; a copy, so the causal LM's own config is untouched.
        self.config = copy.copy(model.config)
        self.config.num_labels = 1

    @property
    def device(self) -> torch.device:
        return self.v_head.weight.device

    def values(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **extra: Any,
    ) -> torch.Tensor:
        """One float32 scalar per position, shape ``(batch, length)`` (``extra``: varlen attention arguments)."""
        hidden = decoder_of(self.model)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **extra
        ).last_hidden_state
        return self.v_head(hidden.to(self.v_head.weight.dtype)).squeeze(-1).float()

    def sequence_scores(self, batch: dict[str, Any], count: int) -> torch.Tensor:
        """One scalar per sequence of a packed batch (:func:`factory.plugin_api.sequence_batch`): the head at its last token."""
        from factory_plugin_trl.sequences import model_inputs

        values = self.values(**model_inputs(batch)).flatten()
        owners = batch["sequence_ids"].flatten()
        index = torch.arange(owners.numel(), device=owners.device)
        valid = owners >= 0
        last = torch.zeros(count, dtype=torch.long, device=owners.device).scatter_reduce(
            0, owners[valid], index[valid], reduce="amax", include_self=False
        )
        return values[last]

    def scores(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One scalar per sequence: the head at its last token."""
        values = self.values(input_ids, attention_mask, position_ids)
        return values.gather(1, last_positions(attention_mask)[:, None]).squeeze(1)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any
    ) -> SequenceClassifierOutputWithPast:
        """Sequence scores as a classifier's ``(batch, 1)`` logits, which TRL's RewardTrainer reads."""
        return SequenceClassifierOutputWithPast(logits=self.scores(input_ids, attention_mask)[:, None])

    def add_model_tags(self, tags: Any) -> None:
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(tags)

    def save_pretrained(self, output_dir: str, **kwargs: Any) -> None:
        """What the method saves of the model (adapter or weights), plus the head; called by the method's ``save``."""
        self.model.save_pretrained(output_dir, **kwargs)
        save_head(self.v_head, output_dir)


def save_head(head: torch.nn.Linear, output_dir: str | Path) -> None:
    tensors = {
        "weight": head.weight.detach().float().cpu().contiguous(),
        "bias": head.bias.detach().float().cpu().contiguous(),
    }
    save_file(tensors, str(Path(output_dir) / HEAD_FILE))


def load_head(folder: str | Path, model: Any) -> torch.nn.Linear:
    """The value head of an rm output folder, checked against ``model``'s hidden size."""
    path = Path(folder) / HEAD_FILE
    if not path.is_file():
        raise ConfigError(f"'{folder}' holds no {HEAD_FILE}; give the output_dir of a finished rm run")
    tensors = load_file(str(path))
    head = new_head(model)
    if tensors["weight"].shape != head.weight.shape:
        raise ConfigError(
            f"the reward head in '{folder}' expects hidden size {tensors['weight'].shape[1]} but model "
            f"'{model.config.name_or_path}' has {head.weight.shape[1]}; train the reward model on the same base model"
        )
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"])
    head.requires_grad_(False)
    return head


def load_reward_model(folder: str | Path, cfg: Any, manager: Any) -> ValueHeadModel:
    """A finished rm run as a frozen scorer, loaded through factory's model pipeline (quantization, patches).

    An adapter folder goes on top of ``cfg.model``; a whole-model folder (rm with full or freeze)
    is loaded as the model itself.
    """
    from factory.plugin_api import load_model

    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"reward model '{folder}' is not a folder; give the output_dir of an rm run")
    if (folder / "adapter_config.json").is_file():
        reward_cfg = cfg.model_copy(update={"adapter": str(folder)})
    else:
        reward_cfg = cfg.model_copy(update={"model": str(folder), "adapter": None})
    loaded = load_model(reward_cfg, manager, train=False)
    model = loaded.model
    model.requires_grad_(False)
    return ValueHeadModel(model, load_head(folder, model)).eval()
