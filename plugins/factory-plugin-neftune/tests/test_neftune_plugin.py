"""factory-plugin-neftune against transformers' NEFTune hook, the paper's formula and a training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factory_plugin_neftune.noise import NEFTUNE, attach, example_lengths
from transformers import AutoModelForCausalLM
from transformers.integrations.neftune import neftune_post_forward_hook

import factory
from factory.testing import check_plugin_contract

DEMO_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "llamafactory-demo"


@pytest.fixture(scope="module")
def model(tiny_causal_lm):
    return AutoModelForCausalLM.from_pretrained(tiny_causal_lm).train()


def embeddings_seen(model, seed: int, **inputs) -> torch.Tensor:
    """What the decoder receives from the embedding layer (after any noise hook) on one forward."""
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda _m, _a, out: seen.append(out.detach().clone()))
    torch.manual_seed(seed)
    with torch.no_grad():
        model(**inputs)
    handle.remove()
    return seen[0]


def test_contract():
    rows = check_plugin_contract("factory-plugin-neftune")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"callbacks": ["neftune"]}


def test_padded_rows_get_transformers_noise(model):
    """Rows without restarting positions: the noise transformers' own NEFTune hook adds, draw for draw."""
    batch = torch.randint(3, 300, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(batch)
    mask[1, 15:] = 0  # a padded row: L is still the row length, as in transformers
    handles = attach(model, 5.0)
    ours = embeddings_seen(model, 7, input_ids=batch, attention_mask=mask)
    for handle in handles:
        handle.remove()
    embed = model.get_input_embeddings()
    embed.neftune_noise_alpha = 5.0
    handle = embed.register_forward_hook(neftune_post_forward_hook)
    theirs = embeddings_seen(model, 7, input_ids=batch, attention_mask=mask)
    handle.remove()
    clean = embeddings_seen(model, 7, input_ids=batch, attention_mask=mask)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-7)
    noise = (ours - clean).abs()
    bound = 5.0 / (20 * 64) ** 0.5
    assert noise.max() <= bound * (1 + 1e-5) and noise.max() > 0.95 * bound


def test_padding_free_rows_scale_by_each_examples_length(model):
    """One row holding examples of 4, 10 and 6 tokens (positions restart): the paper's alpha / sqrt(L_i * d) per example."""
    lengths = [4, 10, 6]
    ids = torch.randint(3, 300, (1, sum(lengths)), generator=torch.Generator().manual_seed(1))
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    assert example_lengths(positions).tolist() == [[4] * 4 + [10] * 10 + [6] * 6]
    handles = attach(model, 5.0)
    noisy = embeddings_seen(model, 11, input_ids=ids, position_ids=positions)
    for handle in handles:
        handle.remove()
    clean = embeddings_seen(model, 11, input_ids=ids, position_ids=positions)
    torch.manual_seed(11)
    draw = torch.zeros_like(clean).uniform_(-1, 1)
    per_token = torch.tensor([n for n in lengths for _ in range(n)], dtype=torch.float32)
    expected = clean + draw * (5.0 / torch.sqrt(per_token * 64))[None, :, None]
    torch.testing.assert_close(noisy, expected, rtol=0, atol=1e-7)


def test_no_noise_in_eval_mode_or_after_training(model):
    batch = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(2))
    callback = NEFTUNE.create(factory.load_config(None, ["callbacks=[neftune]", "neftune.alpha=3"]))
    assert callback.alpha == 3.0
    callback.on_train_begin(None, None, None, model=model)
    model.eval()
    clean = embeddings_seen(model, 1, input_ids=batch)
    model.train()
    assert not torch.equal(embeddings_seen(model, 1, input_ids=batch), clean)
    callback.on_train_end(None, None, None)
    assert torch.equal(embeddings_seen(model, 1, input_ids=batch), clean)


def test_training_run_uses_it(tiny_causal_lm, tmp_path):
    """Through factory.finetune (padding-free batches): the first logged loss moves with the noise, and only with it."""

    def first_loss(name: str, *extra: str) -> float:
        metrics = factory.finetune(
            None,
            [
                f"model={tiny_causal_lm}",
                "dataset=alpaca_en_demo",
                f"dataset_dir={DEMO_DIR}",
                "max_samples=8",
                "cutoff_len=64",
                "batch_size=4",
                "max_steps=1",
                "logging_steps=1",
                "precision=fp32",
                "method=full",
                "sample_prompt=null",
                f"output_dir={tmp_path / name}",
                *extra,
            ],
        )
        return next(e["loss"] for e in metrics["log_history"] if "loss" in e)

    plain = first_loss("plain")
    assert first_loss("again") == plain
    assert first_loss("noisy", "callbacks=[neftune]", "neftune.alpha=400") != plain
