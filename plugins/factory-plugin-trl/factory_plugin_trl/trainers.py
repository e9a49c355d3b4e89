"""TRL's preference and reward trainers, fed factory's tokenized rows.

Each TRL trainer tokenizes its own data; the subclasses here skip that step (the rows come
from factory's data worker, with factory's templates and masks) and keep TRL's losses, its
reference handling and its metrics (rewards/chosen, rewards/rejected, rewards/margins,
rewards/accuracies, kl...). Only the hooks where TRL reads its own data layout are overridden.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOTrainer, KTOTrainer, RewardTrainer
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer

from factory.plugin_api import IGNORE_INDEX
from factory_plugin_trl.value_head import tied_duplicates

REF_ADAPTER = "ref"  # the adapter TRL adds to a PeftModel as its reference (a copy of the trained one)


class _Pretokenized:
    """The rows are tokenized already: TRL's dataset preparation (prompt extraction, tokenization) is skipped."""

    def _prepare_dataset(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        return dataset

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
        return feature


def _starts_as_base(peft_model: Any) -> bool:
    """Does the adapter start as a no-op (LoRA's B = 0), so that the base with it disabled is the initial policy?

    PiSSA-style initialisations move weight from the base into the adapter; then the base alone
    is not the initial policy, and TRL's frozen copy of the initial adapter stays the reference.
    """
    init = getattr(peft_model.peft_config["default"], "init_lora_weights", True)
    return init is True or init == "gaussian"


class _AdapterReference:
    """With a PeftModel and no reference model, the reference is the base with the adapter disabled.

    TRL adds a frozen copy of the adapter (``ref``) for adapters that may be pretrained; a fresh
    LoRA starts as the base itself, so the copy is dropped and TRL falls back to disabling the
    adapter. Either way no ``ref`` adapter is left to be saved with the trained one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._ref_adapter() and _starts_as_base(self.model):
            self.model.delete_adapter(REF_ADAPTER)

    def _ref_adapter(self) -> bool:
        return self.ref_model is None and REF_ADAPTER in getattr(self.model, "peft_config", {})

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            if self._ref_adapter():
                self.model.delete_adapter(REF_ADAPTER)


class FactoryDPOTrainer(_Pretokenized, _AdapterReference, DPOTrainer):
    """TRL's DPO losses (sigmoid, ipo, hinge; plus sft with ``dpo.ftx``) on factory's pairwise rows."""


class FactoryKTOTrainer(_Pretokenized, _AdapterReference, KTOTrainer):
    """TRL's KTO loss on factory's kto rows; the KL pairs come from :class:`KTOPairsCollator`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # TRL asks for a sequential sampler because it pairs neighbouring rows of the data set for
        # the KL term; factory's collator pairs rows inside each batch, so shuffling is safe again.
        self.args.train_sampling_strategy = "random"


class _PairwiseForward:
    """CPO/ORPO read TRL's older batch layout; this computes their log-probabilities from factory's pairwise batch.

    The batch holds ``2B`` rows (chosen first, then rejected) with ``labels`` on the answers only,
    so the SFT term of ORPO and CPO trains the chosen answer, never the prompt.
    """

    average_log_prob = True

    def _wants_nll(self) -> bool:
        return True

    def concatenated_forward(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        extra = {"output_router_logits": True} if self.aux_loss_enabled else {}
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False, **extra)
        logits, labels = outputs.logits, batch["labels"]
        half = labels.shape[0] // 2
        logps = self.get_batch_logps(logits, labels, average_log_prob=self.average_log_prob)
        if self._wants_nll():
            nll = F.cross_entropy(
                logits[:half, :-1].flatten(0, 1).float(), labels[:half, 1:].flatten(), ignore_index=IGNORE_INDEX
            )
        else:
            nll = torch.zeros((), device=logits.device)
        result = (logps[:half], logps[half:], logits[:half], logits[half:], nll)
        return (*result, outputs.aux_loss) if self.aux_loss_enabled else result


class FactorySimPOTrainer(_Pretokenized, _PairwiseForward, CPOTrainer):
    """SimPO through TRL's CPOTrainer (``loss_type=simpo``): average log-probabilities, margin gamma, no reference."""

    def _wants_nll(self) -> bool:
        return self.cpo_alpha != 0


class FactoryORPOTrainer(_Pretokenized, _PairwiseForward, ORPOTrainer):
    """TRL's ORPO loss (SFT on the chosen answer minus beta * log-sigmoid of the log odds ratio)."""


class DedupedCheckpoints:
    """Checkpoints of a wrapper model (not a PreTrainedModel): its state dict with tied weights once.

    The Trainer saves such models with ``safetensors.save_file``, which refuses tensors sharing
    memory (tied embeddings); see :class:`CheckpointableWrapper` for the way back.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is None:
            skip = set(tied_duplicates(self.model))
            state_dict = {name: t.contiguous() for name, t in self.model.state_dict().items() if name not in skip}
        super()._save(output_dir, state_dict)


class FactoryRewardTrainer(_Pretokenized, DedupedCheckpoints, RewardTrainer):
    """TRL's reward loss (-log sigmoid(r_chosen - r_rejected)) on a :class:`ValueHeadModel`.

    With ``eval_before`` the eval split is scored once before training (logged at step 0, and in
    the final metrics as ``before_eval_*``), so the run shows how far training moved the accuracy.
    """

    def __init__(self, *args: Any, eval_before: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_before = eval_before

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        before = None
        if self.eval_before and self.eval_dataset is not None and not resume_from_checkpoint:
            before = self.evaluate()
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if before is not None:
            # train() starts a fresh log, so the score before training goes back in as step 0.
            self.state.log_history.insert(0, {**before, "step": 0})
            output.metrics.update({f"before_{key}": value for key, value in before.items()})
        return output


@contextlib.contextmanager
def trl_errors(stage: str) -> Any:
    """TRL refuses some settings with ValueError (e.g. an adapter on lm_head): one factory sentence instead."""
    from factory.plugin_api import ConfigError

    try:
        yield
    except ValueError as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0].rstrip(".")
        raise ConfigError(f"TRL refused the settings of stage {stage}: {first}; change the {stage} or method options") from None
