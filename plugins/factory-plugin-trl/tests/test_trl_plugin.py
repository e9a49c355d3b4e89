"""factory-plugin-trl on a tiny random model: contract, listing, each stage's wiring against closed forms.

At the first step a fresh LoRA adapter (B = 0) or a frozen copy makes policy and reference the
same model, so every reference-based loss has a known value there; those values check that the
reference really is the base (adapter disabled) or an exact copy. The real-model tests are in
``test_trl_e2e.py``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import logged, run, stage_args

import factory
from factory.errors import ConfigError
from factory.testing import check_plugin_contract

STAGES = ["dpo", "kto", "orpo", "ppo", "rm", "simpo"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread for these tiny-model tests: the tiny model gains nothing from more, and on a CPU
    shared with other jobs two spinning threads per process made steps ~5x slower. The SmolLM2 tests
    (test_trl_e2e.py) keep every thread: there the rm fixture took 172 s with two, 275 s with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reward_by_length(prompts: list[str], responses: list[str]) -> list[float]:
    """A reward function for PPO tests: longer answers score higher."""
    return [len(r) / 20 for r in responses]


REWARD_FUNCTION = f"{Path(__file__).stem}:reward_by_length"


# -- the plugin ------------------------------------------------------------------------------


def test_contract():
    rows = check_plugin_contract("factory-plugin-trl")
    assert [row["status"] for row in rows] == ["ok"]
    assert rows[0]["provides"] == {"data_kinds": ["kto", "pairwise"], "stages": STAGES}


def test_plugins_list_shows_each_stage_and_its_plugin():
    proc = subprocess.run(
        [sys.executable, "-m", "factory.cli", "plugins", "list", "--json"], capture_output=True, text=True, check=True
    )
    rows = [row for row in json.loads(proc.stdout) if "stages" in row["provides"]]
    givers = {stage: row["distribution"] for row in rows for stage in row["provides"]["stages"]}
    assert {stage: givers.get(stage) for stage in STAGES} == dict.fromkeys(STAGES, "factory-plugin-trl")
    table = subprocess.run(
        [sys.executable, "-m", "factory.cli", "plugins", "list"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    ).stdout
    lines = table.splitlines()
    first = next(i for i, line in enumerate(lines) if "factory-plugin-trl" in line)
    stages = next(line for line in lines[first : first + 3] if "stages:" in line)  # one line per kind it provides
    assert all(stage in stages for stage in STAGES), stages


def test_options_reach_their_sections():
    cfg = factory.load_config(
        None,
        [
            "stage=dpo",
            "dpo.beta=0.3",
            "dpo.loss=ipo",
            "simpo.gamma=0.7",
            "kto.desirable_weight=2",
            "ppo.kl_coef=0.2",
            "ppo.target_kl=6",
        ],
    )
    assert (cfg.options("dpo").beta, cfg.options("dpo").loss) == (0.3, "ipo")
    assert cfg.options("simpo").gamma == 0.7 and cfg.options("kto").desirable_weight == 2
    assert (cfg.options("ppo").kl_coef, cfg.options("ppo").target_kl) == (0.2, 6)
    with pytest.raises(ConfigError, match="config key 'dpo.loss'"):
        factory.load_config(None, ["dpo.loss=robust"])


# -- refusals before anything loads -----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (dict(stage="dpo", packing=True), "packing=true does not apply to pairwise data"),
        (dict(stage="kto", batch_size=1), "batch_size=1 is too small; set batch_size to 2 or more"),
        (dict(stage="ppo"), "stage ppo needs exactly one reward source"),
        (dict(stage="ppo", ppo={"reward_function": REWARD_FUNCTION, "reward_model": "x"}), "exactly one reward source"),
        (
            dict(stage="ppo", ppo={"reward_function": REWARD_FUNCTION}, gradient_accumulation_steps=2),
            "gradient_accumulation_steps=2 does not apply",
        ),
        (dict(stage="ppo", ppo={"reward_function": "no_such_module:f"}), "is not an importable callable"),
    ],
)
def test_refusals_are_one_sentence(tiny_causal_lm, tmp_path, extra, message):
    stage = extra.pop("stage")
    with pytest.raises(ConfigError, match=message):
        run(tiny_causal_lm, stage, tmp_path / "out", **extra)


def test_ppo_refuses_a_run_that_is_not_an_rm(tiny_causal_lm, tmp_path):
    dpo_out = tmp_path / "dpo"
    run(tiny_causal_lm, "dpo", dpo_out, max_steps=1)
    with pytest.raises(ConfigError, match="is the output of stage dpo, not rm"):
        run(tiny_causal_lm, "ppo", tmp_path / "ppo", ppo={"reward_model": str(dpo_out)})


# -- collators ------------------------------------------------------------------------------


def test_kto_pairs_put_each_prompt_before_its_neighbours_answer():
    from datasets import Dataset
    from factory_plugin_trl.collators import KTOCollator
    from factory_plugin_trl.reference import with_kl_pairs

    rows = [
        {"prompt_input_ids": [1, 2], "completion_input_ids": [3, 4], "completion_labels": [3, 4], "label": True},
        {"prompt_input_ids": [5], "completion_input_ids": [6, 7, 8], "completion_labels": [-100, 7, 8], "label": False},
        {"prompt_input_ids": [9, 10, 11], "completion_input_ids": [12], "completion_labels": [12], "label": True},
    ]
    rows = with_kl_pairs(Dataset.from_list(rows), batch_size=3).to_list()
    batch = KTOCollator(0, packed=False)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, -100, 7, 8], [-100, -100, -100, 12]]
    kl = [row[: int(n)] for row, n in zip(batch["KL_input_ids"].tolist(), batch["KL_attention_mask"].sum(1))]
    assert kl == [[1, 2, 12], [5, 3, 4], [9, 10, 11, 6, 7, 8]]
    kl_labels = [row[: int(n)] for row, n in zip(batch["KL_labels"].tolist(), batch["KL_attention_mask"].sum(1))]
    assert kl_labels == [[-100, -100, 12], [-100, 3, 4], [-100, -100, -100, -100, 7, 8]]
    assert batch["label"].tolist() == [True, False, True]
    packed = KTOCollator(0)(rows)  # all rows in one packed row, each its own sequence
    assert packed["sequence_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]]


def test_prompts_are_what_precedes_the_final_answer_left_padded():
    from factory_plugin_trl.collators import PromptCollator

    rows = [
        {"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [-100, 2, 3, -100, -100, 6, 7]},  # two turns trained
        {"input_ids": [8, 9, 10], "labels": [-100, -100, 10]},
    ]
    batch = PromptCollator(pad_token_id=0)(rows)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [0, 0, 0, 8, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]


# -- the losses at the first step --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "loss", "expected"),
    [
        ("lora", "sigmoid", math.log(2)),  # -log sigmoid(0)
        ("freeze", "ipo", (1 / (2 * 0.2)) ** 2),  # (0 - 1 / (2 beta))^2
        ("full", "hinge", 1.0),  # relu(1 - 0)
    ],
)
def test_dpo_starts_from_a_reference_equal_to_the_policy(tiny_causal_lm, tmp_path, method, loss, expected):
    extra = {"freeze": {"layers": 1}} if method == "freeze" else {}
    metrics = run(
        tiny_causal_lm,
        "dpo",
        tmp_path / "out",
        method=method,
        max_steps=3,
        max_samples=10,
        val_size=2,
        dpo={"loss": loss, "beta": 0.2},
        **extra,
    )
    assert logged(metrics, "loss")[0] == pytest.approx(expected, rel=1e-5)
    assert logged(metrics, "rewards/margins")[0] == 0.0
    margins = logged(metrics, "rewards/margins")
    assert any(m != 0 for m in margins[1:]), margins  # the policy moved away from the reference
    assert {"eval_rewards/margins", "eval_rewards/accuracies", "eval_loss", "train_rewards/accuracies"} <= set(metrics)
    assert metrics["reference_seconds"] > 0 and 0 <= metrics["train_rewards/accuracies"] <= 1
    out = tmp_path / "out"
    assert (out / "training_rewards.png").is_file() and (out / "metrics.json").is_file()
    if method == "lora":  # only the trained adapter is saved, no reference copy next to it
        assert (out / "adapter_model.safetensors").is_file() and not (out / "ref").exists()


@pytest.mark.parametrize(
    ("stage", "extra"),
    [
        ("kto", dict(method="full", batch_size=4)),
        ("simpo", dict(method="freeze", freeze={"layers": 1})),
        ("orpo", dict(method="full")),
        ("rm", dict(method="freeze", freeze={"layers": 1})),
        ("ppo", dict(method="full", ppo={"reward_function": REWARD_FUNCTION, "max_new_tokens": 4})),
    ],
)
def test_stages_with_full_and_freeze_save_whole_weights(tiny_causal_lm, tmp_path, stage, extra):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    metrics = run(tiny_causal_lm, stage, out, max_steps=2, **extra)
    assert all(math.isfinite(x) for x in logged(metrics, "loss"))
    before, after = load_file(tiny_causal_lm / "model.safetensors"), load_file(out / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    if extra["method"] == "freeze":
        assert changed and all(name.startswith("model.layers.1.") for name in changed), changed
    else:
        assert len(changed) > len(before) // 2
    assert (out / "value_head.safetensors").is_file() == (stage == "rm")


def test_qlora_dpo_reference_is_the_quantized_base(tiny_causal_lm, tmp_path):
    pytest.importorskip("factory_plugin_bitsandbytes")
    metrics = run(tiny_causal_lm, "dpo", tmp_path / "out", quantization="bnb-4bit", max_steps=2)
    assert logged(metrics, "loss")[0] == pytest.approx(math.log(2), rel=1e-5)
    assert all(g > 0 for g in logged(metrics, "grad_norm"))


def test_dpo_reference_is_the_base_computed_once(tiny_causal_lm, tmp_path):
    """The reference log-probabilities the rows carry are the plain base model's (transformers, padded, full logits),
    computed before training and read back from the cache by a second run over the same data and model."""
    from factory_plugin_trl import builders
    from transformers import AutoModelForCausalLM

    from factory.train.run import run_training

    built, computed = [], []
    compute = builders.reference.compute

    def counting(*args, **kwargs):
        computed.append(1)
        return compute(*args, **kwargs)

    def capture(setup):
        built.append(builders.build_dpo(setup))
        return built[-1]

    cfg = factory.load_config(
        stage_args(tiny_causal_lm, "dpo", tmp_path / "out", max_samples=7, max_steps=1, overwrite_output_dir=True)
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(builders.reference, "compute", counting)
        run_training(cfg, cfg.manager(), "pairwise", build_trainer=capture)
        first = len(computed)
        run_training(cfg, cfg.manager(), "pairwise", build_trainer=capture)
    assert len(computed) == first  # the second run read the cache
    assert list(built[0].model.peft_config) == ["default"]  # no reference adapter, no model copy
    rows = built[1].train_dataset
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    for row in rows.select(range(2)):
        for name in ("chosen", "rejected"):
            ids = torch.tensor([row["prompt_input_ids"] + row[f"{name}_input_ids"]])
            labels = torch.tensor([[-100] * len(row["prompt_input_ids"]) + row[f"{name}_labels"]])
            with torch.no_grad():
                logp = torch.log_softmax(base(ids).logits[0, :-1].float(), -1)
            keep = labels[0, 1:] != -100
            expected = logp[keep].gather(1, labels[0, 1:][keep][:, None]).sum().item()
            assert row[f"ref_{name}_logps"] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_dpo_with_a_separate_reference_model(tiny_causal_lm, tmp_path):
    from factory.testing import build_tiny_causal_lm

    other = build_tiny_causal_lm(tmp_path / "other", seed=5)
    metrics = run(tiny_causal_lm, "dpo", tmp_path / "out", max_steps=1, dpo={"ref_model": str(other)})
    assert logged(metrics, "rewards/margins")[0] != 0.0  # a different model: the log-ratios start away from zero
    assert logged(metrics, "loss")[0] != pytest.approx(math.log(2), rel=1e-3)


def test_kto_starts_at_one_half_with_zero_kl(tiny_causal_lm, tmp_path):
    metrics = run(tiny_causal_lm, "kto", tmp_path / "out", max_steps=3, batch_size=4)
    # rewards and KL are 0 at the first step: every answer's loss is 1 - sigmoid(0)
    assert logged(metrics, "loss")[0] == pytest.approx(0.5, rel=1e-6)
    assert logged(metrics, "kl")[0] == 0.0
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins"} <= set(metrics["log_history"][0])


@pytest.mark.parametrize("packed", [True, False])
def test_sequence_logps_of_packed_pairs_equal_padded_rows(tiny_causal_lm, packed):
    """Packed pairs (prompt + chosen, prompt + rejected in one row) give every answer the log-probability a plain
    padded forward over full logits gives it, summed and averaged over the answer's trained tokens."""
    from factory_plugin_trl.collators import PairCollator
    from factory_plugin_trl.sequences import sequence_logps
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm, dtype=torch.float32)
    rows = [
        {
            "prompt_input_ids": [5, 6, 7],
            "chosen_input_ids": [8, 9, 10],
            "chosen_labels": [8, 9, 10],
            "rejected_input_ids": [11, 12],
            "rejected_labels": [11, -100],
        },
        {
            "prompt_input_ids": [13, 14],
            "chosen_input_ids": [15],
            "chosen_labels": [15],
            "rejected_input_ids": [16, 17, 18, 19],
            "rejected_labels": [16, 17, 18, 19],
        },
    ]
    with torch.no_grad():
        got = sequence_logps(model, PairCollator(0, packed=packed)(rows))
    expected, counts = [], []
    for name in ("chosen", "rejected"):
        for row in rows:
            ids = torch.tensor([row["prompt_input_ids"] + row[f"{name}_input_ids"]])
            labels = [-100] * len(row["prompt_input_ids"]) + row[f"{name}_labels"]
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            picked = [logp[t - 1, ids[0, t]] for t in range(1, len(labels)) if labels[t] != -100]
            expected.append(sum(picked).item())
            counts.append(len(picked))
    torch.testing.assert_close(got.sums, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert got.tokens.tolist() == counts
    torch.testing.assert_close(
        got.means, torch.tensor(expected) / torch.tensor(counts, dtype=torch.float32), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("stage", ["simpo", "orpo"])
def test_simpo_and_orpo_losses_follow_from_the_logged_logprobs(tiny_causal_lm, tmp_path, stage):
    options = {"simpo": {"beta": 2.5, "gamma": 0.8}, "orpo": {"beta": 0.3}}[stage]
    metrics = run(tiny_causal_lm, stage, tmp_path / "out", batch_size=1, max_steps=1, **{stage: options})
    entry = metrics["log_history"][0]
    chosen, rejected = entry["logps/chosen"], entry["logps/rejected"]  # one pair: averages per answer token
    if stage == "simpo":  # -log sigmoid(beta * (chosen - rejected) - gamma)
        expected = -math.log(1 / (1 + math.exp(-(2.5 * (chosen - rejected) - 0.8))))
    else:  # nll(chosen) - beta * log sigmoid(log odds)
        log_odds = (chosen - rejected) - (math.log1p(-math.exp(chosen)) - math.log1p(-math.exp(rejected)))
        expected = entry["nll_loss"] - 0.3 * math.log(1 / (1 + math.exp(-log_odds)))
        assert entry["nll_loss"] == pytest.approx(-chosen, rel=1e-4)  # one pair: the SFT term is its answer's NLL
    assert entry["loss"] == pytest.approx(expected, rel=1e-4)


# -- reward model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rm_run(tiny_causal_lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "out"
    metrics = run(tiny_causal_lm, "rm", out, max_samples=12, val_size=4, max_steps=4)
    return out, metrics


def test_rm_saves_the_adapter_and_the_head_and_reports_accuracy_before_and_after(rm_run):
    out, metrics = rm_run
    assert (out / "adapter_model.safetensors").is_file() and (out / "value_head.safetensors").is_file()
    assert 0 <= metrics["before_eval_accuracy"] <= 1 and 0 <= metrics["eval_accuracy"] <= 1
    steps = [entry["step"] for entry in metrics["log_history"] if "eval_accuracy" in entry]
    assert steps[0] == 0 and steps[-1] == 4
    assert logged(metrics, "accuracy") and logged(metrics, "margin")


@pytest.mark.parametrize(
    ("stage", "extra"), [("rm", {}), ("ppo", {"ppo": {"reward_function": REWARD_FUNCTION, "max_new_tokens": 4}})]
)
def test_wrapper_models_checkpoint_and_resume(tiny_causal_lm, tmp_path, stage, extra):
    """rm's and ppo's models are wrappers, not PreTrainedModels: checkpoints hold their state dict, tied weights once."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    run(tiny_causal_lm, stage, out, max_steps=2, save_steps=2, **extra)
    saved = load_file(out / "checkpoint-2" / "model.safetensors")
    assert not any(name.endswith("lm_head.weight") for name in saved)  # tied to the embeddings: stored once
    metrics = run(tiny_causal_lm, stage, out, max_steps=3, save_steps=2, resume=True, **extra)
    assert [entry["step"] for entry in metrics["log_history"] if "loss" in entry][-1] == 3
    assert json.loads((out / "factory_run.json").read_text())["resumed_from"].endswith("checkpoint-2")


def test_saved_reward_model_scores_like_the_trainer(rm_run, tiny_causal_lm):
    """Reloaded from disk, the reward model gives the eval accuracy the run reported."""
    from factory_plugin_trl.value_head import load_reward_model
    from transformers import AutoTokenizer

    from factory.data.template import get_template
    from factory.data.worker import build_datasets

    out, metrics = rm_run
    cfg = factory.load_config(stage_args(tiny_causal_lm, "rm", out, max_samples=12, val_size=4))
    manager = cfg.manager()
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    _, eval_rows, collator, _ = build_datasets(
        cfg, manager, tokenizer, get_template(cfg.template, tokenizer, manager), "pairwise"
    )
    scorer = load_reward_model(out, cfg, manager)
    batch = collator(list(eval_rows))  # pairs packed one per row, as the trainer saw them
    with torch.no_grad():
        scores = scorer.sequence_scores(batch, 2 * len(eval_rows))
    chosen, rejected = scores.chunk(2)
    assert (chosen > rejected).float().mean().item() == pytest.approx(metrics["eval_accuracy"])


# -- PPO ------------------------------------------------------------------------------------


def test_ppo_with_a_reward_function_on_a_shared_base(tiny_causal_lm, tmp_path):
    out = tmp_path / "out"
    metrics = run(
        tiny_causal_lm, "ppo", out, max_steps=3, ppo={"reward_function": REWARD_FUNCTION, "max_new_tokens": 6}
    )
    assert logged(metrics, "kl")[0] == 0.0  # the first answers come from the untrained policy
    assert all(0 < length <= 6 for length in logged(metrics, "response_length"))
    assert logged(metrics, "kl_coef") == [0.05] * 3  # fixed without target_kl
    for key in ("reward", "policy_loss", "value_loss", "clip_fraction"):
        assert len(logged(metrics, key)) == 3, key
    # Only the policy adapter is saved, and it loads on the base.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert json.loads((out / "adapter_config.json").read_text())["r"] == 8
    assert not (out / "value").exists() and not (out / "reward").exists()
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), out)


def test_ppo_adaptive_kl_control_follows_its_rule(tiny_causal_lm, tmp_path):
    target, horizon, batch = 0.01, 20, 2
    metrics = run(
        tiny_causal_lm,
        "ppo",
        tmp_path / "out",
        max_steps=4,
        batch_size=batch,
        ppo={"reward_function": REWARD_FUNCTION, "max_new_tokens": 6, "target_kl": target, "kl_horizon": horizon},
    )
    kl, coef = logged(metrics, "kl"), logged(metrics, "kl_coef")
    for step in range(3):  # each step's coefficient comes from the previous one and its measured KL
        error = min(max(kl[step] / target - 1, -0.2), 0.2)
        assert coef[step + 1] == pytest.approx(coef[step] * (1 + error * batch / horizon), rel=1e-6)


@pytest.mark.parametrize("share_base", [True, False])
def test_ppo_with_the_reward_model_of_an_rm_run(rm_run, tiny_causal_lm, tmp_path, share_base):
    out, _ = rm_run
    metrics = run(
        tiny_causal_lm,
        "ppo",
        tmp_path / "out",
        max_steps=2,
        ppo={"reward_model": str(out), "share_base": share_base, "max_new_tokens": 6},
    )
    assert logged(metrics, "kl")[0] == 0.0
    assert all(math.isfinite(r) for r in logged(metrics, "reward"))


def test_ppo_gae_matches_the_discounted_sum(tiny_causal_lm):
    """With lam = 1, GAE is the discounted return minus the value (an independent closed form)."""
    from factory_plugin_trl.ppo import gae

    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.1, -0.2, 0.0], [0.4, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    gamma = 0.9
    advantages, returns = gae(rewards, values, mask, gamma, 1.0)
    for row in range(2):
        n = int(mask[row].sum())
        for t in range(n):
            discounted = sum(gamma ** (k - t) * rewards[row, k].item() for k in range(t, n))
            assert advantages[row, t].item() == pytest.approx(discounted - values[row, t].item(), abs=1e-6)
            assert returns[row, t].item() == pytest.approx(discounted, abs=1e-6)
        assert advantages[row, n:].abs().sum() == 0
