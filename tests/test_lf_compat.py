"""LLaMA-Factory YAMLs, unchanged: each example maps to the expected run config or is refused in one sentence.

The fixtures are LLaMA-Factory's own example files (tests/fixtures/llamafactory/SOURCES.yaml names
the repository, commit and path of each), adapted only in model_name_or_path and dataset_dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from factory import lf_compat
from factory.cli import main
from factory.config import load_config
from factory.errors import ConfigError
from factory.train.distributed import deepspeed_config
from factory.train.layerwise import check_layerwise

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "llamafactory"
SOURCES = yaml.safe_load((FIXTURES / "SOURCES.yaml").read_text(encoding="utf-8"))
FAST = [
    "max_steps=1",
    "max_samples=4",
    "gradient_accumulation_steps=1",
    "cutoff_len=256",
    "sample_prompt=null",
    "precision=fp32",
    "gradient_checkpointing=false",
    "preprocessing_num_workers=null",
]

# Every fixture: None when it loads, else a fragment of its one-sentence refusal.
OUTCOME: dict[str, str | None] = {
    "train_lora/qwen3_lora_sft.yaml": None,
    "train_lora/qwen3_lora_dpo.yaml": None,
    "train_lora/qwen3_lora_kto.yaml": None,
    "train_lora/qwen3_lora_pretrain.yaml": None,
    "train_lora/qwen3_lora_reward.yaml": None,
    "train_lora/qwen3_lora_sft_ds3.yaml": None,
    "train_lora/qwen3_preprocess.yaml": "'tokenized_path'",
    "train_lora/qwen3_lora_sft_ray.yaml": "'ray_num_workers'",
    "train_lora/qwen3vl_lora_sft.yaml": "'image_max_pixels'",
    "train_lora/llama3_lora_ppo.yaml": None,
    "train_lora/llama3_lora_predict.yaml": None,
    "train_lora/llama3_lora_eval.yaml": None,
    "train_qlora/qwen3_lora_sft_otfq.yaml": None,
    "train_qlora/qwen3_lora_sft_bnb_npu.yaml": None,
    "train_qlora/llama3_lora_sft_gptq.yaml": None,
    "train_qlora/llama3_lora_sft_awq.yaml": None,
    "train_qlora/llama3_lora_sft_aqlm.yaml": None,
    "train_full/qwen3_full_sft.yaml": None,
    "extras/galore/llama3_full_sft.yaml": None,
    "extras/badam/llama3_full_sft.yaml": None,
    "extras/llama_pro/llama3_freeze_sft.yaml": "'use_llama_pro: true'",
    "extras/loraplus/llama3_lora_sft.yaml": None,
    "extras/pissa/llama3_lora_sft.yaml": None,
    "extras/mod/llama3_full_sft.yaml": "'mixture_of_depths'",
    "extras/apollo/llama3_full_sft.yaml": None,
    "extras/adam_mini/qwen2_full_sft.yaml": None,
    "extras/muon/qwen2_full_sft.yaml": None,
    "extras/fsdp_qlora/llama3_lora_sft.yaml": None,
    "extras/nlg_eval/llama3_lora_predict.yaml": None,
    "extras/oft/llama3_oft_sft.yaml": None,
    "extras/dft/qwen2_full_sft.yaml": "'use_dft_loss: true'",
    "extras/cce/qwen2_full_sft.yaml": "'use_cce: true'",
    "extras/fp8/llama3_fp8_deepspeed_sft.yaml": "'fp8: true'",
    "merge_lora/qwen3_lora_sft.yaml": None,
    "merge_lora/qwen3_gptq.yaml": None,
    "merge_lora/qwen3_full_sft.yaml": None,
    "inference/qwen3_lora_sft.yaml": None,
    "inference/llama3.yaml": None,
    "inference/llama3_vllm.yaml": None,
}
LOADS = [name for name, refusal in OUTCOME.items() if refusal is None]


@pytest.fixture
def at_repo(monkeypatch):
    """The fixtures' dataset_dir is relative to the repository root, as LLaMA-Factory's is to its own."""
    monkeypatch.chdir(REPO)


def test_every_fixture_has_its_source_and_an_expected_outcome():
    files = {str(p.relative_to(FIXTURES)) for p in FIXTURES.rglob("*.yaml") if p.name != "SOURCES.yaml"}
    assert files == set(SOURCES) == set(OUTCOME)
    for name, source in SOURCES.items():
        assert source["repo"] == "hiyouga/LLaMA-Factory" and len(source["commit"]) == 40
        assert source["path"] == f"examples/{name}"
        assert all(item.startswith(("model_name_or_path", "dataset_dir")) for item in source["adapted"])


@pytest.mark.parametrize("name", sorted(OUTCOME))
def test_example_loads_or_is_refused_in_one_sentence(name, at_repo):
    refusal = OUTCOME[name]
    if refusal is None:
        cfg = load_config(FIXTURES / name)
        assert cfg.model == "smollm2-135m-instruct"
        return
    with pytest.raises(ConfigError) as err:
        load_config(FIXTURES / name)
    message = str(err.value)
    assert message.startswith(f"LLaMA-Factory key {refusal}") and "\n" not in message
    assert message.count("; ") == 1  # what is wrong; what to do instead


def _raw(name: str) -> dict:
    return yaml.safe_load((FIXTURES / name).read_text(encoding="utf-8"))


def test_lora_sft_maps_every_key(at_repo):
    cfg = load_config(FIXTURES / "train_lora/qwen3_lora_sft.yaml")
    assert (cfg.stage, cfg.method, cfg.template, cfg.dataset) == ("sft", "lora", "qwen3_nothink", "identity")
    assert (cfg.cutoff_len, cfg.max_samples, cfg.preprocessing_num_workers) == (2048, 1000, 16)
    assert (cfg.output_dir, cfg.logging_steps, cfg.save_steps, cfg.overwrite_output_dir) == (
        "saves/qwen3-4b/lora/sft",
        10,
        500,
        True,
    )
    assert (cfg.batch_size, cfg.gradient_accumulation_steps, cfg.learning_rate, cfg.num_epochs) == (1, 8, 1e-4, 3.0)
    assert (cfg.lr_scheduler, cfg.warmup_ratio, cfg.precision, cfg.report_to) == ("cosine", 0.1, "bf16", [])
    assert (cfg.options("lora").rank, cfg.options("lora").target, cfg.options("lora").scaling_alpha) == (8, "all", 16.0)
    assert cfg.trust_remote_code and cfg.gradient_checkpointing  # LLaMA-Factory checkpoints unless disabled
    assert not cfg.resume


def test_methods_and_optimizers_of_the_extras(at_repo):
    galore = load_config(FIXTURES / "extras/galore/llama3_full_sft.yaml")
    assert (galore.method, galore.optimizer, galore.precision) == ("full", "galore-layerwise", "bf16")
    opts = galore.options("galore")
    assert (opts.target, opts.rank, opts.scale) == (["mlp", "self_attn"], 128, 2.0)
    assert (galore.warmup_ratio, galore.warmup_steps, galore.val_size, galore.eval_steps) == (0.1, 0, 0.1, 500)
    badam = load_config(FIXTURES / "extras/badam/llama3_full_sft.yaml").options("badam")
    assert (badam.mode, badam.switch_mode, badam.switch_every, badam.verbose) == ("layer", "ascending", 50, 2)
    qlora = load_config(FIXTURES / "extras/fsdp_qlora/llama3_lora_sft.yaml")
    assert (qlora.quantization, qlora.precision, qlora.options("lora").target) == (
        "bnb-4bit",
        "fp16",
        ["q_proj", "v_proj"],
    )
    npu = load_config(FIXTURES / "train_qlora/qwen3_lora_sft_bnb_npu.yaml")
    assert (npu.quantization, npu.options("bnb").double_quant) == ("bnb-4bit", False)
    pissa = load_config(FIXTURES / "extras/pissa/llama3_lora_sft.yaml")
    assert (pissa.method, pissa.options("lora").pissa_niter) == ("pissa", 16)
    loraplus = load_config(FIXTURES / "extras/loraplus/llama3_lora_sft.yaml")
    assert (loraplus.method, loraplus.options("lora").loraplus_lr_ratio) == ("loraplus", 16.0)
    oft = load_config(FIXTURES / "extras/oft/llama3_oft_sft.yaml")
    assert (oft.method, oft.options("oft").block_size, oft.options("oft").target) == ("oft", 32, "all")
    apollo = load_config(FIXTURES / "extras/apollo/llama3_full_sft.yaml")
    assert (apollo.optimizer, apollo.options("apollo").scale, apollo.gradient_accumulation_steps) == (
        "apollo-layerwise",
        32.0,
        1,
    )
    assert apollo.max_grad_norm == galore.max_grad_norm == 0  # what layer-wise steps allow (check_layerwise)
    check_layerwise(apollo, "apollo-layerwise", "apollo")
    check_layerwise(galore, "galore-layerwise", "galore")
    assert load_config(FIXTURES / "extras/adam_mini/qwen2_full_sft.yaml").optimizer == "adam-mini"
    assert load_config(FIXTURES / "extras/muon/qwen2_full_sft.yaml").optimizer == "muon"
    ds3 = load_config(FIXTURES / "train_full/qwen3_full_sft.yaml")
    assert (ds3.method, ds3.deepspeed, ds3.dataset) == ("full", "zero3", ["identity", "alpaca_en_demo"])
    assert load_config(FIXTURES / "train_lora/qwen3_lora_sft_ds3.yaml").deepspeed == "zero3"
    assert deepspeed_config(ds3.deepspeed)["zero_optimization"]["stage"] == 3  # what the Trainer is given


def test_deepspeed_files(tmp_path, monkeypatch):
    """LLaMA-Factory's stock paths are the presets unless the file is there; other files pass through."""
    monkeypatch.chdir(tmp_path)
    base = {"model_name_or_path": "smollm2-135m-instruct"}
    assert load_config({**base, "deepspeed": "examples/deepspeed/ds_z2_config.json"}).deepspeed == "zero2"
    assert load_config({**base, "deepspeed": "examples/deepspeed/ds_z0_config.json"}).deepspeed is None
    assert load_config({**base, "deepspeed": "my_offload.json"}).deepspeed == "my_offload.json"
    own = tmp_path / "examples" / "deepspeed" / "ds_z3_config.json"
    own.parent.mkdir(parents=True)
    own.write_text('{"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}', encoding="utf-8")
    assert (
        load_config({**base, "deepspeed": "examples/deepspeed/ds_z3_config.json"}).deepspeed
        == "examples/deepspeed/ds_z3_config.json"
    )


def test_stages_and_their_options(at_repo):
    dpo = load_config(FIXTURES / "train_lora/qwen3_lora_dpo.yaml")
    assert (dpo.stage, dpo.options("dpo").beta, dpo.options("dpo").loss, dpo.learning_rate) == (
        "dpo",
        0.1,
        "sigmoid",
        5e-6,
    )
    kto = load_config(FIXTURES / "train_lora/qwen3_lora_kto.yaml")
    assert (kto.stage, kto.options("kto").beta) == ("kto", 0.1)
    assert load_config(FIXTURES / "train_lora/qwen3_lora_reward.yaml").stage == "rm"
    assert load_config(FIXTURES / "train_lora/qwen3_lora_pretrain.yaml").stage == "pt"
    ppo = load_config(FIXTURES / "train_lora/llama3_lora_ppo.yaml")
    opts = ppo.options("ppo")
    assert (ppo.stage, opts.reward_model, opts.max_new_tokens, opts.top_k, opts.top_p) == (
        "ppo",
        "saves/llama3-8b/lora/reward",
        512,
        0,
        0.9,
    )
    assert ppo.max_new_tokens == 256  # the chat setting is untouched: these are the PPO rollout's
    simpo = load_config({**_raw("train_lora/qwen3_lora_dpo.yaml"), "pref_loss": "simpo", "pref_beta": 2.5})
    assert (simpo.stage, simpo.options("simpo").beta, simpo.options("simpo").gamma) == ("simpo", 2.5, 0.5)
    orpo = load_config({**_raw("train_lora/qwen3_lora_dpo.yaml"), "pref_loss": "orpo"})
    assert (orpo.stage, orpo.options("orpo").beta) == ("orpo", 0.1)
    evaluation = load_config(FIXTURES / "train_lora/llama3_lora_eval.yaml")
    assert (evaluation.task, evaluation.eval_split, evaluation.n_shot, evaluation.eval_prompt) == (
        "mmlu",
        "test",
        5,
        "raw",
    )
    assert evaluation.adapter == "saves/llama3-8b/lora/sft" and evaluation.eval_batch_size == 4
    predict = load_config(FIXTURES / "train_lora/llama3_lora_predict.yaml")
    assert (predict.task, predict.eval_dataset, predict.eval_batch_size) == (
        "bleu-rouge",
        ["identity", "alpaca_en_demo"],
        1,
    )


def test_preference_keys_reach_the_dpo_options(at_repo):
    dpo = {
        **_raw("train_lora/qwen3_lora_dpo.yaml"),
        "ref_model": "smollm2-135m-instruct",
        "dpo_label_smoothing": 0.1,
        "pref_ftx": 0.5,
    }
    opts = load_config(dpo).options("dpo")
    assert (opts.ref_model, opts.label_smoothing, opts.ftx) == ("smollm2-135m-instruct", 0.1, 0.5)
    simpo = load_config({**dpo, "pref_loss": "simpo"})  # reference-free: ref_model and label smoothing are not read
    assert (simpo.stage, simpo.options("simpo").ftx) == ("simpo", 0.5)
    kto = {**_raw("train_lora/qwen3_lora_kto.yaml"), "pref_ftx": 0.0}
    assert load_config(kto).stage == "kto"  # a 0 coefficient does nothing there either


def test_hub_and_export_keys(at_repo):
    hub = load_config(
        {"model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "model_revision": "v1.0", "hub_model_id": "me/x"}
    )
    assert (hub.model, hub.revision) == ("Qwen/Qwen2.5-0.5B-Instruct", "v1.0")
    assert load_config({"model_name_or_path": "smollm2-135m-instruct", "model_revision": "main"}).revision is None
    merge = load_config({**_raw("merge_lora/qwen3_lora_sft.yaml"), "export_hub_model_id": "me/merged"})
    assert (merge.export_dir, merge.export_max_shard_size, merge.export_hub_repo, merge.export_hub_private) == (
        "saves/qwen3_sft_merged",
        5 * 10**9,
        "me/merged",
        True,
    )


def test_inference_and_merge_yamls(at_repo):
    chat = load_config(FIXTURES / "inference/qwen3_lora_sft.yaml")
    assert (chat.engine, chat.adapter, chat.template, chat.method) == (
        "transformers",
        "saves/qwen3-4b/lora/sft",
        "qwen3_nothink",
        "lora",
    )
    vllm = load_config(FIXTURES / "inference/llama3_vllm.yaml")
    assert (vllm.engine, vllm.options("vllm").enforce_eager) == ("vllm", True)
    gptq = load_config(FIXTURES / "merge_lora/qwen3_gptq.yaml")
    assert (gptq.quantization, gptq.options("gptq").bits, gptq.options("gptq").calibration_dataset) == (
        "gptq",
        4,
        "data/c4_demo.jsonl",
    )


@pytest.mark.parametrize(
    ("given", "says"),
    [
        (
            {"pissa_init": True, "loraplus_lr_ratio": 16.0},
            "LLaMA-Factory keys 'pissa_init' and 'loraplus_lr_ratio' both set factory's method",
        ),
        (
            {"finetuning_type": "freeze", "pissa_init": True},
            "LLaMA-Factory keys 'finetuning_type' and 'pissa_init' both set factory's method",
        ),
        ({"lora_rnak": 8}, "LLaMA-Factory key 'lora_rnak' has no counterpart in factory's converter"),
        ({"quantization_bit": 3}, "LLaMA-Factory key 'quantization_bit: 3' has no counterpart in factory"),
        ({"quantization_method": "hqq"}, "LLaMA-Factory key 'quantization_method: hqq'"),
        ({"pref_loss": "kto_pair", "stage": "dpo"}, "LLaMA-Factory key 'pref_loss: kto_pair'"),
        ({"adapter_name_or_path": "a,b"}, "LLaMA-Factory key 'adapter_name_or_path: a,b' stacks several adapters"),
        ({"resume_from_checkpoint": "out/checkpoint-5"}, "'resume_from_checkpoint: out/checkpoint-5'"),
        ({"infer_backend": "sglang"}, "LLaMA-Factory key 'infer_backend: sglang'"),
        ({"top_k": 50}, "LLaMA-Factory key 'top_k: 50'"),
        (
            {"stage": "kto", "ref_model": "m"},
            "LLaMA-Factory key 'ref_model: m' has no counterpart in stages kto and ppo",
        ),
        (
            {"stage": "ppo", "ref_model": "m"},
            "LLaMA-Factory key 'ref_model: m' has no counterpart in stages kto and ppo",
        ),
        ({"ref_model_adapters": "a"}, "LLaMA-Factory key 'ref_model_adapters' has no counterpart"),
        ({"stage": "kto", "pref_ftx": 0.5}, "LLaMA-Factory key 'pref_ftx: 0.5' has no counterpart in this stage"),
        (
            {"stage": "dpo", "pref_loss": "orpo", "pref_ftx": 1},
            "LLaMA-Factory key 'pref_ftx: 1' has no counterpart in this stage",
        ),
        (
            {"use_galore": True, "galore_layerwise": True, "max_grad_norm": 1.0},
            "LLaMA-Factory keys 'galore_layerwise' and 'max_grad_norm' both set factory's max_grad_norm",
        ),
        ({"push_to_hub": True}, "LLaMA-Factory key 'push_to_hub: true' has no counterpart in factory finetune"),
    ],
)
def test_refusals_name_the_key(given, says):
    with pytest.raises(ConfigError) as err:
        load_config({"model_name_or_path": "smollm2-135m-instruct", **given})
    assert says in str(err.value) and "\n" not in str(err.value)


def test_overrides_after_a_llamafactory_file_are_factory_keys(at_repo):
    cfg = load_config(FIXTURES / "train_lora/qwen3_lora_sft.yaml", ["max_steps=3", "lora.rank=4", "batch_size=2"])
    assert (cfg.max_steps, cfg.options("lora").rank, cfg.batch_size, cfg.gradient_accumulation_steps) == (3, 4, 2, 8)


def test_a_factory_config_is_left_alone():
    assert not lf_compat.is_llamafactory({"model": "x", "stage": "sft", "dataset": "identity", "template": "llama3"})


@pytest.mark.parametrize("name", LOADS)
def test_convert_round_trip(name, at_repo, tmp_path):
    out = tmp_path / "factory.yaml"
    assert main(["convert", str(FIXTURES / name), "-o", str(out)]) == 0
    native = yaml.safe_load(out.read_text(encoding="utf-8"))
    assert not lf_compat.is_llamafactory(native) and "model" in native
    assert load_config(out).to_dict() == load_config(FIXTURES / name).to_dict()


def test_convert_prints_the_grouped_form(at_repo, capsys):
    assert main(["convert", str(FIXTURES / "merge_lora/qwen3_lora_sft.yaml")]) == 0
    text = capsys.readouterr().out
    assert "# run it with factory export THIS.yaml\n" in text
    native = yaml.safe_load(text)
    assert native["model"] == {
        "path": "smollm2-135m-instruct",
        "adapter": "saves/qwen3-4b/lora/sft",
        "trust_remote_code": True,
        "gradient_checkpointing": True,
    }
    assert native["export"] == {"dir": "saves/qwen3_sft_merged", "max_shard_size": "5GB"}
    assert main(["convert", str(FIXTURES / "train_lora/llama3_lora_predict.yaml")]) == 0
    assert "# run it with factory predict THIS.yaml\n" in capsys.readouterr().out


def test_the_migration_guide_table_is_generated():
    """docs/migrating.md holds exactly the table markdown() makes now (nox -s docs rewrites it)."""
    guide = (REPO / "docs" / "migrating.md").read_text(encoding="utf-8")
    start = guide.index(lf_compat.GENERATED_START) + len(lf_compat.GENERATED_START)
    assert guide[start : guide.index(lf_compat.GENERATED_END)] == lf_compat.markdown()
    for key, rule in lf_compat.TABLE.items():  # every key a row, every refusal sentence spelled out
        assert f"\n| `{key}` |" in guide
        for sentence in [
            rule.refuse,
            *(
                v.sentence
                for v in [*(rule.values or {}).values(), *rule.in_stage.values()]
                if isinstance(v, lf_compat.Refuse)
            ),
        ]:
            assert sentence is None or sentence in guide


@pytest.fixture(scope="module")
def tiny_adapter(tiny_causal_lm, tmp_path_factory, demo_dir):
    """A LoRA adapter trained one step on the tiny model through a LLaMA-Factory config."""
    import factory

    out = tmp_path_factory.mktemp("lf-adapter") / "adapter"
    lf = {
        **_raw("train_lora/qwen3_lora_sft.yaml"),
        "model_name_or_path": str(tiny_causal_lm),
        "dataset_dir": str(demo_dir),
        "template": "chatml",
        "output_dir": str(out),
    }
    factory.finetune(lf, FAST)
    return out


def test_export_takes_the_merge_yaml(tiny_causal_lm, tiny_adapter, tmp_path, monkeypatch):
    """factory export merge_lora/...yaml: export_dir is the output, export_size the shard size; the merge equals peft's."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)  # export_dir is relative, as in LLaMA-Factory
    config = FIXTURES / "merge_lora/qwen3_lora_sft.yaml"
    assert main(["export", str(config), f"model={tiny_causal_lm}", f"adapter={tiny_adapter}", "template=chatml"]) == 0
    merged_dir = tmp_path / "saves" / "qwen3_sft_merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    oracle = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_causal_lm), tiny_adapter
    ).merge_and_unload()
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    torch.testing.assert_close(merged(ids).logits, oracle(ids).logits, rtol=1e-4, atol=1e-4)
    sharded = tmp_path / "sharded"
    assert (
        main(
            [
                "export",
                str(config),
                f"model={tiny_causal_lm}",
                f"adapter={tiny_adapter}",
                "template=chatml",
                f"output={sharded}",
                "max_shard_size=100KB",
            ]
        )
        == 0
    )
    assert len(list(sharded.glob("model-*.safetensors"))) > 1 and (sharded / "model.safetensors.index.json").is_file()


def test_chat_takes_the_inference_yaml(tiny_causal_lm, tiny_adapter, capsys):
    """infer_backend, finetuning_type and trust_remote_code are read; the answer (of a random model) may be empty."""
    config = FIXTURES / "inference/qwen3_lora_sft.yaml"
    assert (
        main(
            [
                "chat",
                str(config),
                f"model={tiny_causal_lm}",
                f"adapter={tiny_adapter}",
                "template=chatml",
                "max_new_tokens=4",
                "--prompt",
                "Who are you?",
            ]
        )
        == 0
    )
    assert "error" not in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["train_lora/qwen3_lora_sft.yaml", "train_lora/qwen3_lora_dpo.yaml"])
def test_example_trains_smollm2(name, smollm2_path, at_repo, tmp_path):
    """The example itself, on SmolLM2 (its alias is the adapted model path), one optimizer step."""
    assert main(["finetune", str(FIXTURES / name), *FAST, f"output_dir={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_predict_takes_the_predict_yaml(tiny_causal_lm, tiny_adapter, demo_dir, tmp_path):
    """do_predict: the eval_dataset's answers are the labels, and each prediction is PEFT's own greedy continuation."""
    import json

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "predict"
    assert (
        main(
            [
                "predict",
                str(FIXTURES / "train_lora/llama3_lora_predict.yaml"),
                f"model={tiny_causal_lm}",
                f"adapter={tiny_adapter}",
                "template=chatml",
                f"dataset_dir={demo_dir}",
                "max_samples=2",
                "max_new_tokens=4",
                f"output_dir={out}",
                f"results_db={tmp_path / 'results.db'}",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    answers = [
        record["output"]
        for name in ("identity", "alpaca_en_demo")
        for record in json.loads((demo_dir / f"{name}.json").read_text(encoding="utf-8"))[:2]
    ]
    assert [row["label"] for row in rows] == answers
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_causal_lm), tiny_adapter).eval()
    for row in rows:
        ids = tokenizer(row["prompt"], return_tensors="pt", add_special_tokens=False).input_ids
        with torch.inference_mode():
            greedy = model.generate(ids, max_new_tokens=4, do_sample=False)
        assert row["predict"] == tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_finetune_refuses_the_predict_yaml_naming_factory_predict(at_repo, capsys):
    config = FIXTURES / "extras/nlg_eval/llama3_lora_predict.yaml"
    assert main(["finetune", str(config)]) == 2
    err = capsys.readouterr().err
    assert (
        f"'do_predict: true' asks for generated predictions, which factory finetune does not make; run factory predict {config}"
        in err
    )
    assert err.count("\n") == 1


@pytest.mark.e2e
def test_dpo_example_with_a_reference_model_and_label_smoothing(smollm2_path, at_repo, tmp_path):
    """ref_model and dpo_label_smoothing, LLaMA-Factory's keys, reach factory's dpo stage, which trains a step with them."""
    lf = {**_raw("train_lora/qwen3_lora_dpo.yaml"), "ref_model": "smollm2-135m-instruct", "dpo_label_smoothing": 0.1}
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(lf), encoding="utf-8")
    assert main(["finetune", str(tmp_path / "dpo.yaml"), *FAST, f"output_dir={tmp_path / 'out'}"]) == 0
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_apollo_layerwise_example_trains_the_tiny_model(tiny_causal_lm, demo_dir, tmp_path):
    """LLaMA-Factory's layer-wise APOLLO example through factory finetune: the attention and MLP weights move."""
    import torch
    from safetensors.torch import load_file

    lf = {
        **_raw("extras/apollo/llama3_full_sft.yaml"),
        "model_name_or_path": str(tiny_causal_lm),
        "dataset_dir": str(demo_dir),
        "template": "chatml",
        "output_dir": str(tmp_path / "out"),
        "apollo_rank": 4,
    }
    (tmp_path / "apollo.yaml").write_text(yaml.safe_dump(lf), encoding="utf-8")
    # one step: the example's warm-up would make its learning rate 0
    assert main(["finetune", str(tmp_path / "apollo.yaml"), *FAST, "warmup_ratio=0", "learning_rate=1e-3"]) == 0
    before, after = load_file(tiny_causal_lm / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    moved = [name for name in before if name in after and not torch.equal(before[name], after[name])]
    assert any("q_proj" in name for name in moved) and any("mlp" in name for name in moved), moved
