"""Loss parity with TRL: on fixed batches, factory's preference and reward losses equal TRL's own.

factory computes the policy's sequence log-probabilities its own way (pairs packed one per row,
positions restarting, the LM head chunked over the vocabulary) and the losses from
:mod:`factory_plugin_trl.losses`; the oracle is TRL 1.x itself: its ``DPOTrainer``,
``KTOTrainer`` and ``RewardTrainer`` computing the loss of the same batch (padded, their own
forward), and the loss methods of its ``CPOTrainer`` (SimPO) and ``ORPOTrainer`` on log-probabilities
from a plain forward over full logits. The reference is a second random model, so the
log-ratios are far from zero and every term of the losses matters.
"""

from __future__ import annotations

import copy
import types
from contextlib import nullcontext

import pytest
import torch
from datasets import Dataset
from factory_plugin_trl import reference
from factory_plugin_trl.collators import KTOCollator, PairCollator
from factory_plugin_trl.preference import DPO, KTO, ORPO, Reward, SimPO
from factory_plugin_trl.sequences import sequence_logps
from factory_plugin_trl.value_head import ValueHeadModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from factory.plugin_api import register_varlen_sdpa
from factory.testing import build_tiny_causal_lm

PAIRS = [  # token ids: prompt, chosen, rejected (different lengths, so padding and packing differ)
    ([5, 17, 40, 41, 9], [60, 61, 62, 2], [70, 71, 2]),
    ([5, 18, 33], [80, 81, 82, 83, 84, 2], [90, 2]),
    ([5, 19, 44, 45, 46, 47, 9], [100, 101, 2], [110, 111, 112, 113, 2]),
]
KTO_ROWS = [  # prompt, completion, desirable
    ([5, 17, 40, 41, 9], [60, 61, 62, 2], True),
    ([5, 18, 33], [80, 81, 82, 83, 84, 2], False),
    ([5, 19, 44, 45, 46, 47, 9], [100, 101, 2], True),
    ([5, 20, 21], [120, 121, 2], False),
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return (
        build_tiny_causal_lm(tmp_path_factory.mktemp("policy"), seed=0),
        build_tiny_causal_lm(tmp_path_factory.mktemp("reference"), seed=1),
    )


def _load(model_dirs, **kwargs):
    policy_dir, ref_dir = model_dirs
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32, **kwargs)
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32, **kwargs).eval()
    return policy, ref, AutoTokenizer.from_pretrained(policy_dir)


@pytest.fixture(scope="module")
def models(model_dirs):
    """A tiny policy and a different tiny reference (fp32), and the policy's tokenizer."""
    return _load(model_dirs)


@pytest.fixture(scope="module")
def varlen_models(model_dirs):
    """The same models with factory's padding-free attention, which can share a pair's prompt."""
    return _load(model_dirs, attn_implementation=register_varlen_sdpa())


LAYOUTS = {  # PairCollator fields: every answer its own padded row; a pair per row; the batch one row, prompts once
    "padded": {"packed": False},
    "packed": {"packed": True},
    "shared": {"packed": True, "flatten": True, "share_prompt": True},
}


def factory_trainer() -> types.SimpleNamespace:
    """What an objective asks of its trainer: sequence log-probabilities (here without autocast)."""
    return types.SimpleNamespace(
        forward_and_logprobs=lambda model, batch, prefix="", **kept: sequence_logps(
            model, batch, prefix=prefix, **kept
        ),
        forward_context=lambda model: nullcontext(),
    )


def pair_rows() -> list[dict]:
    return [
        {
            "prompt_input_ids": p,
            "chosen_input_ids": c,
            "chosen_labels": c,
            "rejected_input_ids": r,
            "rejected_labels": r,
        }
        for p, c, r in PAIRS
    ]


def with_reference(rows: list[dict], ref, collator, columns) -> list[dict]:
    values = reference.compute(
        ref, Dataset.from_list(rows), collator, columns, batch_size=2, autocast=nullcontext, device=torch.device("cpu")
    )
    return [{**row, **{name: float(values[name][i]) for name in columns}} for i, row in enumerate(rows)]


def trl_args(config_cls, tmp_path, **fields):
    """fp32 (TRL's configs default to bf16, which would autocast its reference), CPU, no reporting."""
    return config_cls(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=len(PAIRS),
        **fields,
    )


class _Pretokenized:
    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset


# -- DPO ---------------------------------------------------------------------------------------


def trl_dpo_loss(policy, ref, tokenizer, tmp_path, pairs, **config):
    from trl import DPOConfig, DPOTrainer

    class Trainer(_Pretokenized, DPOTrainer):
        pass

    rows = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs]
    policy, ref = copy.deepcopy(policy), copy.deepcopy(ref)  # TRL patches the models it is given
    trainer = Trainer(
        model=policy,
        ref_model=ref,
        args=trl_args(DPOConfig, tmp_path, **config),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator(rows)
    policy.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    return loss.item(), metrics


@pytest.mark.parametrize(
    ("loss", "beta", "ftx"), [("sigmoid", 0.1, 0.0), ("ipo", 0.5, 0.0), ("hinge", 0.3, 0.0), ("sigmoid", 0.2, 0.7)]
)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_dpo_equals_trl(models, varlen_models, tmp_path, loss, beta, ftx, layout):
    policy, ref, tokenizer = models
    ours_policy, ours_ref, _ = varlen_models if layout == "shared" else models
    collator = PairCollator(tokenizer.pad_token_id, **LAYOUTS[layout])
    rows = with_reference(pair_rows(), ours_ref, collator, reference.PAIR_COLUMNS)
    with torch.no_grad():
        ours, metrics = DPO(beta=beta, loss=loss, ftx=ftx)(factory_trainer(), ours_policy, collator(rows))
    types_, weights = ([loss, "sft"], [1.0, ftx]) if ftx else ([loss], None)
    theirs, trl_metrics = trl_dpo_loss(
        policy, ref, tokenizer, tmp_path, PAIRS, beta=beta, loss_type=types_, loss_weights=weights
    )
    assert ours.item() == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        # rewards are beta times differences of log-probabilities of about -30: fp32 leaves ~1e-6 of them
        assert metrics[key] == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-5), key
    assert abs(metrics["rewards/margins"]) > 1e-3  # the reference really differs from the policy


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_dpo_label_smoothing_equals_trl_conservative_loss(models, tmp_path, smoothing):
    """cDPO: TRL 1.x writes it as ``aot_unpaired`` with label smoothing, which on one pair (nothing to sort) is
    ``-(1 - e) log sigmoid(beta d) - e log sigmoid(-beta d)``; each pair is compared on its own."""
    policy, ref, tokenizer = models
    collator = PairCollator(tokenizer.pad_token_id)
    rows = with_reference(pair_rows(), ref, collator, reference.PAIR_COLUMNS)
    for row, pair in zip(rows, PAIRS):
        with torch.no_grad():
            ours, _ = DPO(beta=0.5, label_smoothing=smoothing)(factory_trainer(), policy, collator([row]))
        theirs, _ = trl_dpo_loss(
            policy, ref, tokenizer, tmp_path, [pair], beta=0.5, loss_type=["aot_unpaired"], label_smoothing=smoothing
        )
        plain, _ = trl_dpo_loss(policy, ref, tokenizer, tmp_path, [pair], beta=0.5, loss_type=["sigmoid"])
        assert ours.item() == pytest.approx(theirs, rel=1e-5)
        assert ours.item() != pytest.approx(plain, rel=1e-3)  # smoothing changed the loss


# -- KTO ---------------------------------------------------------------------------------------


KTO_LAYOUTS = {  # KTOCollator fields: a row per example; all in one packed row; one row, mismatched answers continuing
    "padded": {"packed": False},
    "packed": {"packed": True},
    "continued": {"packed": True, "flatten": True, "continue_kl": True},
}


def kto_rows() -> list[dict]:
    rows = [
        {"prompt_input_ids": p, "completion_input_ids": c, "completion_labels": c, "label": d} for p, c, d in KTO_ROWS
    ]
    return reference.with_kl_pairs(Dataset.from_list(rows), batch_size=len(rows)).to_list()


@pytest.mark.parametrize("layout", list(KTO_LAYOUTS))
def test_kto_equals_trl(models, varlen_models, layout, tmp_path):
    from trl import KTOConfig, KTOTrainer

    policy, ref, tokenizer = varlen_models if layout == "continued" else models
    rows = kto_rows()
    collator = KTOCollator(tokenizer.pad_token_id, **KTO_LAYOUTS[layout])
    assert ("KL_prefix_spans" in collator(rows)) == (layout == "continued")
    rows = with_reference(rows, ref, collator, reference.KTO_COLUMNS)
    with torch.no_grad():
        ours, metrics = KTO(beta=0.3, desirable_weight=1.5, undesirable_weight=0.8)(
            factory_trainer(), policy, collator(rows)
        )

    class Trainer(_Pretokenized, KTOTrainer):
        pass

    trl_rows = [
        {
            "prompt_ids": r["prompt_input_ids"],
            "completion_ids": r["completion_input_ids"],
            "KL_completion_ids": r["KL_completion_input_ids"],
            "label": r["label"],
        }
        for r in rows
    ]
    args = trl_args(KTOConfig, tmp_path, beta=0.3, desirable_weight=1.5, undesirable_weight=0.8)
    policy, ref = copy.deepcopy(policy), copy.deepcopy(ref)  # TRL patches the models it is given
    trainer = Trainer(
        model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(trl_rows), processing_class=tokenizer
    )
    # TRL's own rotation of completions gives the same mismatched pairs as the data set above
    assert [r["KL_completion_ids"] for r in trl_rows] == [r["completion_ids"] for r in trl_rows[-1:] + trl_rows[:-1]]
    policy.train()
    with torch.no_grad():
        theirs = trainer.compute_loss(policy, trainer.data_collator(trl_rows)).item()
    assert ours.item() == pytest.approx(theirs, rel=1e-5)
    trl_metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    for key in ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert metrics[key] == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-5), key
    assert metrics["kl"] > 0  # the reference differs, so the KL term is live


# -- SimPO and ORPO (reference-free) -------------------------------------------------------------


def padded_average_logps(policy, tokenizer):
    """TRL's own log-probabilities of the chosen and rejected answers: padded rows, full logits, get_batch_logps."""
    from trl.experimental.cpo import CPOTrainer

    rows = [p + c for p, c, _ in PAIRS] + [p + r for p, _, r in PAIRS]
    labels = [[-100] * len(p) + c for p, c, _ in PAIRS] + [[-100] * len(p) + r for p, _, r in PAIRS]
    length = max(map(len, rows))
    ids = torch.tensor([row + [tokenizer.pad_token_id] * (length - len(row)) for row in rows])
    mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in rows])
    labels = torch.tensor([label + [-100] * (length - len(label)) for label in labels])
    logits = policy(input_ids=ids, attention_mask=mask).logits
    logps = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    half = len(PAIRS)
    nll = torch.nn.functional.cross_entropy(
        logits[:half, :-1].flatten(0, 1), labels[:half, 1:].flatten(), ignore_index=-100
    )
    return logps[:half], logps[half:], nll


@pytest.mark.parametrize(("beta", "gamma", "ftx"), [(2.0, 1.0, 0.0), (2.5, 0.4, 0.3)])
def test_simpo_equals_trl(models, beta, gamma, ftx):
    from trl.experimental.cpo import CPOTrainer

    policy, _, tokenizer = models
    with torch.no_grad():
        ours, metrics = SimPO(beta=beta, gamma=gamma, ftx=ftx)(
            factory_trainer(), policy, PairCollator(tokenizer.pad_token_id)(pair_rows())
        )
        chosen, rejected, nll = padded_average_logps(policy, tokenizer)
    trl_self = types.SimpleNamespace(
        alpha=0.0,
        loss_type="simpo",
        simpo_gamma=gamma,
        beta=beta,
        label_smoothing=0.0,
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
    )
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(trl_self, chosen, rejected)
    assert ours.item() == pytest.approx((losses.mean() + ftx * nll).item(), rel=1e-5)
    assert metrics["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(), rel=1e-5)
    assert metrics["nll_loss"] == pytest.approx(nll.item(), rel=1e-5)


@pytest.mark.parametrize("layout", ["packed", "shared"])
def test_orpo_equals_trl(models, varlen_models, layout):
    from trl.experimental.orpo import ORPOTrainer

    policy, _, tokenizer = models
    ours_policy = (varlen_models if layout == "shared" else models)[0]
    batch = PairCollator(tokenizer.pad_token_id, **LAYOUTS[layout])(pair_rows())
    with torch.no_grad():
        ours, metrics = ORPO(beta=0.25)(factory_trainer(), ours_policy, batch)
        chosen, rejected, nll = padded_average_logps(policy, tokenizer)
    trl_self = types.SimpleNamespace(beta=0.25, accelerator=types.SimpleNamespace(device=torch.device("cpu")))
    losses, _, _, ratio, log_odds = ORPOTrainer.odds_ratio_loss(trl_self, chosen, rejected)
    assert ours.item() == pytest.approx((nll - losses.mean()).item(), rel=1e-5)  # TRL: policy_nll_loss - losses.mean()
    assert metrics["log_odds_ratio"] == pytest.approx(ratio.item(), rel=1e-5)
    assert metrics["log_odds_chosen"] == pytest.approx(log_odds.item(), rel=1e-5)


# -- reward model --------------------------------------------------------------------------------


@pytest.mark.parametrize(("center", "layout"), [(None, "packed"), (0.05, "packed"), (0.05, "shared")])
def test_reward_loss_equals_trl(models, varlen_models, tmp_path, center, layout):
    from trl import RewardConfig, RewardTrainer

    policy, _, tokenizer = models
    torch.manual_seed(0)
    model = ValueHeadModel(policy)
    torch.nn.init.normal_(model.v_head.weight, std=0.5)  # scores far from zero, so ranking and centring matter
    ours_model = model
    if layout == "shared":  # the same head over the varlen copy of the policy
        ours_model = ValueHeadModel(varlen_models[0])
        ours_model.v_head.load_state_dict(model.v_head.state_dict())
    with torch.no_grad():
        ours, metrics = Reward(center=center)(
            factory_trainer(), ours_model, PairCollator(tokenizer.pad_token_id, **LAYOUTS[layout])(pair_rows())
        )

    class Trainer(_Pretokenized, RewardTrainer):
        pass

    rows = [{"chosen_ids": p + c, "rejected_ids": p + r} for p, c, r in PAIRS]
    trainer = Trainer(
        model=model,
        args=trl_args(RewardConfig, tmp_path, center_rewards_coefficient=center),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    model.train()
    with torch.no_grad():
        theirs = trainer.compute_loss(model, trainer.data_collator(rows)).item()
    assert ours.item() == pytest.approx(theirs, rel=1e-5)
    trl_metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    for key in ("accuracy", "margin", "min_reward", "max_reward", "mean_reward"):
        assert metrics[key] == pytest.approx(trl_metrics[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("whole_model", [False, True])
@pytest.mark.parametrize("grad", [True, False])
def test_continued_mismatched_answers_score_as_when_each_follows_its_prompt(
    varlen_models, grad, whole_model, monkeypatch
):
    """The mismatched answers continuing the prompts' captured keys (only the answers computed) get the
    log-probabilities of the plain layout (``[prompt, answer]`` rows), and the rows themselves are unchanged,
    also when one mismatched answer is empty; through the decoder and chunked head, or through the whole
    model's logits (a DDP wrapper, a model that transforms its logits)."""
    from factory_plugin_trl import sequences

    from factory.plugin_api import KeyCache

    if whole_model:
        monkeypatch.setattr(sequences, "split_head", lambda model: None)

    policy = varlen_models[0]
    rows = kto_rows()
    rows[1]["KL_completion_input_ids"], rows[1]["KL_completion_labels"] = [], []
    plain = KTOCollator(0, packed=True, flatten=True)(rows)
    continued = KTOCollator(0, packed=True, flatten=True, continue_kl=True)(rows)
    assert continued["KL_input_ids"].numel() == sum(len(r["KL_completion_input_ids"]) for r in rows)
    with torch.set_grad_enabled(grad):
        matched = sequence_logps(policy, plain)
        kept = KeyCache()
        again = sequence_logps(policy, continued, capture=kept)
        with torch.no_grad():
            want = sequence_logps(policy, plain, prefix="KL_").sums
            have = sequence_logps(policy, continued, prefix="KL_", after=kept).sums
    assert torch.equal(matched.sums, again.sums)
    assert len(kept.layers) == policy.config.num_hidden_layers
    assert have.shape == (len(rows),) and have[1] == want[1] == 0  # an empty answer scores nothing
    assert torch.allclose(have, want, atol=1e-5) and (have[[0, 2, 3]] < -1).all(), (have, want)
    with pytest.raises(ValueError, match="needs the KeyCache"):
        sequence_logps(policy, continued, prefix="KL_")


def test_the_policy_shares_prompts_only_where_its_attention_hides_the_chosen_answer(models, varlen_models):
    from factory_plugin_trl.builders import policy_collator

    plain, varlen = models[0], varlen_models[0]
    flat = PairCollator(0, packed=True, flatten=True)
    chosen = {
        (name, flatten): policy_collator(types.SimpleNamespace(model=model, collator=collator)).share_prompt
        for name, model in (("plain", plain), ("varlen", varlen))
        for flatten, collator in ((True, flat), (False, PairCollator(0, packed=True)))
    }
    assert chosen == {("plain", True): False, ("plain", False): False, ("varlen", True): True, ("varlen", False): False}
    kto = KTOCollator(0, packed=True, flatten=True)
    assert policy_collator(types.SimpleNamespace(model=varlen, collator=kto)).continue_kl
    assert policy_collator(types.SimpleNamespace(model=plain, collator=kto)) is kto


def test_an_empty_rejected_answer_keeps_its_prompt_in_every_layout():
    row = {"prompt_input_ids": [5, 6], "chosen_input_ids": [7], "chosen_labels": [7]}
    row |= {"rejected_input_ids": [], "rejected_labels": []}
    for layout, fields in LAYOUTS.items():
        batch = PairCollator(0, **fields)([row])
        rejected = batch["input_ids"][batch["sequence_ids"] == 1].tolist()
        assert rejected == [5, 6], layout  # a reward reads its last token: the prompt's, as in TRL
