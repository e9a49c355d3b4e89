"""Reference log-probabilities, computed once before training (no gradient, the compute precision) and cached.

DPO and KTO compare the policy with a reference: the model before training (the base with a
fresh adapter disabled, or the untouched weights of a full/freeze run) or a separate model
(``dpo.ref_model``). Its log-probabilities of the data never change, so they are computed in one
pass over the train and eval rows and stored as columns of the data set, instead of a second
model copy or a reference forward every step. They are cached next to the tokenized data,
keyed by the data set's fingerprint and the model's identity, so a second run reads them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from factory.plugin_api import LogitsWorkspace
from factory_plugin_trl.sequences import continuation_cache, sequence_logps
from factory_plugin_trl.value_head import is_peft

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
KTO_COLUMNS = ("ref_logps", "ref_KL_logps")


def starts_as_base(model: Any) -> bool:
    """Does the adapter start as a no-op (LoRA's B = 0), so the base with it disabled is the initial policy?

    PiSSA-style initialisations move weight from the base into the adapter; then the model as it
    is before training (adapter on) is the reference.
    """
    init = getattr(model.peft_config["default"], "init_lora_weights", True)
    return init is True or init == "gaussian"


@contextlib.contextmanager
def as_reference(model: Any) -> Iterator[Any]:
    """``model`` as the initial policy, in eval mode: a fresh adapter switched off, else the model as it is."""
    was_training = model.training
    model.eval()
    off = model.disable_adapter() if is_peft(model) and starts_as_base(model) else contextlib.nullcontext()
    try:
        with off:
            yield model
    finally:
        model.train(was_training)


def with_kl_pairs(dataset: Any, batch_size: int) -> Any:
    """KTO's mismatched pairs as columns: within each run of ``batch_size`` rows, row ``i`` gets row ``i - 1``'s answer.

    TRL's rotation (``(x_1, y_n), (x_2, y_1), ...``), fixed in the data so the pairs' reference
    log-probabilities can be computed once.
    """

    def rotate(rows: dict[str, list]) -> dict[str, list]:
        return {
            "KL_completion_input_ids": rows["completion_input_ids"][-1:] + rows["completion_input_ids"][:-1],
            "KL_completion_labels": rows["completion_labels"][-1:] + rows["completion_labels"][:-1],
        }

    return dataset.map(rotate, batched=True, batch_size=batch_size, desc="KTO mismatched pairs")


def model_identity(model: Any) -> str:
    """A cheap fingerprint of the weights a reference pass reads: name, shapes, and a few values of each end."""
    named = list(model.named_parameters())
    probe = [named[0], named[len(named) // 2], named[-1]] if named else []
    digest = hashlib.sha256(str(getattr(getattr(model, "config", None), "_name_or_path", "")).encode())
    for name, tensor in probe:
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().flatten()[:256].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


# The code that computes the values is part of the cache key: editing it invalidates older caches.
CODE_VERSION = hashlib.sha256(
    b"".join((Path(__file__).parent / name).read_bytes() for name in ("reference.py", "sequences.py", "collators.py"))
).hexdigest()[:12]


def _cache_file(dataset: Any, key: str) -> Path | None:
    files = getattr(dataset, "cache_files", None) or []
    if not files:
        return None  # an in-memory data set: nothing to key the cache on, compute each time
    return Path(files[0]["filename"]).parent / f"factory-reference-{key}.npz"


@contextlib.contextmanager
def as_training_computes(model: Any) -> Iterator[None]:
    """Gradient mode on, as in a training step, but nothing to differentiate: every parameter frozen for the block.

    Kernels choose their path by gradient mode (the core's CPU attention for short examples takes its
    training kernel only when gradients are on); the reference must round as the policy's first step
    does, or in bf16 the two differ by a few tenths of a nat per answer before any training. With no
    parameter requiring a gradient, no graph is kept.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        with torch.enable_grad():
            yield
    finally:
        for parameter in trainable:
            parameter.requires_grad_(True)


def compute(
    model: Any,
    dataset: Any,
    collator: Callable[[list], dict],
    columns: tuple[str, ...],
    *,
    batch_size: int,
    autocast: Callable[[], AbstractContextManager],
    device: torch.device,
) -> dict[str, np.ndarray]:
    """One pass over ``dataset`` in order: the reference log-probabilities of each row, per column."""
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False)
    workspace = LogitsWorkspace()
    values: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    with as_training_computes(model):
        for batch in loader:
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            kept = continuation_cache(batch)  # as KTO's policy pass keeps it
            sums = sequence_logps(model, batch, workspace=workspace, autocast=autocast, capture=kept).sums
            sums = sums.detach().cpu().numpy()
            if columns == PAIR_COLUMNS:
                half = len(sums) // 2
                values[columns[0]].append(sums[:half])
                values[columns[1]].append(sums[half:])
            else:
                values[columns[0]].append(sums)
                with torch.no_grad():  # as KTO's policy pass over the mismatched pairs, which trains nothing
                    kl = sequence_logps(
                        model, batch, workspace=workspace, autocast=autocast, prefix="KL_", after=kept
                    ).sums
                values[columns[1]].append(kl.cpu().numpy())
    return {name: np.concatenate(parts) if parts else np.zeros(0, np.float32) for name, parts in values.items()}


def attach(
    dataset: Any,
    identity: dict[str, Any],
    columns: tuple[str, ...],
    run: Callable[[], dict[str, np.ndarray]],
) -> Any:
    """``dataset`` with the reference columns added: read from the cache when this data and model were seen, else ``run()``."""
    if dataset is None:
        return None
    key = hashlib.sha256(
        json.dumps(
            [getattr(dataset, "_fingerprint", None), identity, CODE_VERSION], sort_keys=True, default=str
        ).encode()
    ).hexdigest()[:20]
    cache = _cache_file(dataset, key)
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            values = {name: stored[name] for name in columns}
        log.info("reference log-probabilities read from %s", cache)
    else:
        values = run()
        if cache is not None:
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, **values)
            tmp.replace(cache)
    for name in columns:
        dataset = dataset.add_column(name, values[name].astype(np.float32).tolist())
    return dataset
