"""Per-sequence log-probabilities of a batch of examples in one forward pass, chunked over the vocabulary.

A batch from :func:`factory.plugin_api.sequence_batch` holds several examples per row (a pair's
chosen and rejected answers after their prompt, restarting positions) and says which example
each token belongs to (``sequence_ids``). The decoder runs once; the LM head runs only on the
trained positions, a chunk at a time (``chunked_token_logprobs``), so no full-vocabulary logits
exist for the batch in any precision.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from factory.plugin_api import IGNORE_INDEX, KeyCache, LogitsWorkspace, chunked_token_logprobs, split_head

MODEL_KEYS = (
    "input_ids",
    "attention_mask",
    "position_ids",
    "cu_seq_lens_q",
    "cu_seq_lens_k",
    "max_length_q",
    "max_length_k",
    "hidden_key_bands",
)


@dataclass
class SequenceLogps:
    """Log-probabilities of each sequence's trained tokens (fp32), and the tokens they came from."""

    sums: torch.Tensor  # (sequences,) summed over the sequence's trained tokens
    tokens: torch.Tensor  # (sequences,) how many tokens train in each
    token_logps: torch.Tensor  # (trained tokens,) one per trained token
    token_sequence: torch.Tensor  # (trained tokens,) the sequence of each

    @property
    def means(self) -> torch.Tensor:
        """Length-normalised log-probabilities (SimPO, ORPO, IPO read these)."""
        return self.sums / self.tokens.clamp(min=1)


def model_inputs(batch: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """What the decoder takes from a batch (``prefix``: e.g. ``KL_`` for KTO's mismatched pairs)."""
    return {key: batch[prefix + key] for key in MODEL_KEYS if prefix + key in batch}


def count_sequences(batch: dict[str, Any], prefix: str = "") -> int:
    """How many sequences the batch scores (a continuation batch names it: an empty answer has no token)."""
    if prefix + "sequence_count" in batch:
        return int(batch[prefix + "sequence_count"])
    return int(batch[prefix + "sequence_ids"].max()) + 1


def continuation_cache(batch: dict[str, Any], prefix: str = "KL_") -> KeyCache | None:
    """An empty :class:`KeyCache` for the pass over ``batch`` when its ``prefix`` rows continue that pass, else None."""
    return KeyCache() if prefix + "prefix_spans" in batch else None


def sequence_logps(
    model: Any,
    batch: dict[str, Any],
    *,
    workspace: LogitsWorkspace | None = None,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    prefix: str = "",
    capture: KeyCache | None = None,
    after: KeyCache | None = None,
) -> SequenceLogps:
    """The summed log-probabilities of every sequence in ``batch`` under ``model`` (gradients flow when enabled).

    The trained targets are the shifted labels, or given explicitly (``target_index``, ``target_ids``,
    ``target_sequence``) by a shared-prefix batch, where a position can predict two targets.
    ``capture`` keeps this pass's keys, values and last hidden states; ``after`` is such a capture,
    which a batch of continuations (``prefix_spans``, ``prompt_last``: see
    :meth:`~factory_plugin_trl.collators.KTOCollator._continuations`) extends without gradients.
    """
    count = count_sequences(batch, prefix)
    explicit = prefix + "target_index" in batch
    if explicit:
        index, targets, owners = (batch[prefix + key] for key in ("target_index", "target_ids", "target_sequence"))
    else:
        shifted = batch[prefix + "labels"][:, 1:]
        keep = shifted != IGNORE_INDEX
        targets, owners = shifted[keep], batch[prefix + "sequence_ids"][:, 1:][keep]
    continues = prefix + "prefix_spans" in batch
    if continues and after is None:
        raise ValueError("a batch of continuations needs the KeyCache of the pass over the rows it continues")
    parts = split_head(model)
    extra: dict[str, Any] = {}
    if capture is not None:
        extra["key_cache"] = capture
    if continues:
        extra["prefix_keys"] = (after, batch[prefix + "prefix_spans"])
    with autocast():
        if parts is not None:
            decoder, head = parts
            outputs = decoder(**model_inputs(batch, prefix), use_cache=False, **extra).last_hidden_state
        else:  # a model that transforms its logits (soft-capping, scaling) or a DDP wrapper: its own head
            outputs = model(**model_inputs(batch, prefix), use_cache=False, **extra).logits
    if capture is not None:  # the rows a continuation reads: hidden states, or logits on the path above
        capture.hidden = outputs.detach()
    flat = outputs.flatten(0, 1)
    if continues:  # the answers' first tokens are predicted by their prompts' last positions, in the captured pass
        flat = torch.cat([flat, after.hidden.flatten(0, 1)[batch[prefix + "prompt_last"]]])
    rows = flat[index] if explicit else outputs[:, :-1][keep]
    if parts is not None:
        token_logps = chunked_token_logprobs(rows, head, targets, workspace=workspace)
    else:
        token_logps = torch.log_softmax(rows.float(), -1).gather(1, targets[:, None])[:, 0]
    sums = torch.zeros(count, dtype=torch.float32, device=token_logps.device).index_add(0, owners, token_logps)
    tokens = torch.bincount(owners, minlength=count)
    return SequenceLogps(sums, tokens, token_logps, owners)
