"""Config: YAML, key=value overrides and kwargs as three equal ways in; one-sentence errors."""

from __future__ import annotations

import pytest

from factory.config import RunConfig, load_config, parse_overrides
from factory.errors import ConfigError


def test_three_ways_in_give_the_same_config(tmp_path):
    (tmp_path / "run.yaml").write_text("learning_rate: 2.0e-4\nfreeze:\n  layers: 3\ndataset: [a, b]\n")
    from_yaml = load_config(tmp_path / "run.yaml")
    from_cli = load_config(None, ["learning_rate=2e-4", "freeze.layers=3", "dataset=[a,b]"])
    from_kwargs = load_config(learning_rate=2e-4, freeze={"layers": 3}, dataset=["a", "b"])
    assert from_yaml.to_dict() == from_cli.to_dict() == from_kwargs.to_dict()
    assert from_yaml.options("freeze").layers == 3
    assert from_yaml.datasets == ["a", "b"]


def test_later_sources_win(tmp_path):
    (tmp_path / "run.yaml").write_text("batch_size: 2\nseed: 1\n")
    cfg = load_config(tmp_path / "run.yaml", ["batch_size=8"], seed=7)
    assert (cfg.batch_size, cfg.seed) == (8, 7)


def test_resolved_config_round_trips(tmp_path):
    import yaml

    cfg = load_config(None, ["freeze.layers=-2", "method=freeze"])
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(tmp_path / "resolved.yaml").to_dict() == cfg.to_dict()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lerning_rate=1e-4"], "unknown config key 'lerning_rate'; did you mean 'learning_rate'?"),
        (["freeze.layres=1"], "unknown config key 'freeze.layres'; did you mean 'freeze.layers'?"),
        (["plugins.disbale=[x]"], "unknown config key 'plugins.disbale'; did you mean 'plugins.disable'?"),
        (["batch_size=0"], "config key 'batch_size': Input should be greater than 0 (got 0)"),
        (["learning_rate=-1"], "config key 'learning_rate': Input should be greater than 0 (got -1)"),
        (["precision=fp8"], "config key 'precision': Input should be 'auto', 'bf16', 'fp16' or 'fp32' (got 'fp8')"),
        (
            ["freeze.layers=0"],
            "config section 'freeze': freeze.layers is 0 and freeze.extra is empty, so nothing would train",
        ),
        (["freeze=3"], "config key 'freeze' must be a mapping of options"),
        (["no_equals_sign"], "override 'no_equals_sign' is not of the form key=value"),
    ],
)
def test_errors_are_one_sentence(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: x\nlearning_rate: [1, 2\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML at line \d"):
        load_config(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' does not exist"):
        load_config("nope.yaml")


def test_non_mapping_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_override_values_are_typed():
    assert parse_overrides(["a=16", "b=true", "c=[1,2]", "d.e=x", "f=1e-4", "g="]) == {
        "a": 16,
        "b": True,
        "c": [1, 2],
        "d": {"e": "x"},
        "f": "1e-4",
        "g": None,
    }


def test_every_required_top_level_key_exists():
    required = {
        "model",
        "template",
        "dataset",
        "method",
        "stage",
        "quantization",
        "optimizer",
        "output_dir",
        "cutoff_len",
        "batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "num_epochs",
        "max_steps",
        "seed",
    }
    assert required <= set(RunConfig.model_fields)


def test_unknown_section_lookup():
    cfg = load_config()
    with pytest.raises(ConfigError, match="config section 'frezze' is not known"):
        cfg.options("frezze")


# -- groups, read-only configs, plugin sections in the schema -------------------------------------


def test_every_core_key_is_in_exactly_one_group():
    from factory.config import CORE_KEYS, GROUPS

    grouped = [key for keys in GROUPS.values() for key in keys]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == CORE_KEYS - {"jobs", "plugins"}


def test_grouped_and_flat_configs_are_the_same_config(tmp_path):
    (tmp_path / "grouped.yaml").write_text(
        "model:\n  path: smollm2-135m-instruct\n  precision: bf16\ndata:\n  cutoff_len: 512\n"
        "train:\n  learning_rate: 2.0e-4\n  method: freeze\noutput:\n  output_dir: out\nfreeze:\n  layers: 3\n"
    )
    grouped = load_config(tmp_path / "grouped.yaml")
    flat = load_config(
        None,
        [
            "model=smollm2-135m-instruct",
            "precision=bf16",
            "cutoff_len=512",
            "learning_rate=2e-4",
            "method=freeze",
            "output_dir=out",
            "freeze.layers=3",
        ],
    )
    assert grouped.to_dict() == flat.to_dict()
    assert load_config(flat.to_grouped()).to_dict() == flat.to_dict()  # the grouped form reloads
    assert grouped.section("train")["learning_rate"] == 2e-4


def test_a_flat_model_and_dotted_group_keys_combine(tmp_path):
    (tmp_path / "run.yaml").write_text("model: smollm2-135m-instruct\n")
    cfg = load_config(tmp_path / "run.yaml", ["model.precision=fp32", "train.batch_size=8"])
    assert (cfg.model, cfg.precision, cfg.batch_size) == ("smollm2-135m-instruct", "fp32", 8)
    assert load_config({"model": {"path": "a", "precision": "fp32"}}, ["model=b"]).model == "b"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"lr": 1}}, "unknown config key 'train.lr' (the train group holds: stage,"),
        ({"model": {"model": "x"}}, "unknown config key 'model.model' (the model group holds: path,"),
        (
            {"train": {"learning_rate": 1.0}, "learning_rate": 2.0},
            "config key 'learning_rate' is given both flat and inside its group, with different values; keep one",
        ),
    ],
)
def test_bad_groups_are_one_sentence(data, message):
    with pytest.raises(ConfigError) as info:
        load_config(data)
    assert str(info.value).startswith(message)


def test_runconfig_itself_takes_plugin_sections_and_is_read_only():
    cfg = RunConfig(method="freeze", freeze={"layers": 2}, train={"batch_size": 3})
    assert cfg.options("freeze").layers == 2 and cfg.batch_size == 3
    with pytest.raises(ConfigError, match="unknown config key 'freeze.layres'; did you mean 'freeze.layers'"):
        RunConfig(freeze={"layres": 2})
    with pytest.raises(ConfigError, match="config key 'batch_size'"):
        RunConfig(batch_size="many")
    with pytest.raises(ValueError, match="frozen"):
        cfg.batch_size = 5
    changed = cfg.model_copy(update={"batch_size": 5})
    assert (changed.batch_size, cfg.batch_size, changed.options("freeze").layers) == (5, 3, 2)


def test_the_schema_holds_every_plugin_section_and_the_groups():
    from factory.config import GROUPS, config_schema
    from factory.plugins import get_manager

    schema = config_schema()
    for name in get_manager().sections():
        assert name in schema["properties"] and schema["properties"][name]["x-factory-plugin"]
    assert schema["properties"]["freeze"]["properties"]["layers"]["type"] == "integer"
    assert {schema["properties"][key]["x-factory-group"] for keys in GROUPS.values() for key in keys} == set(GROUPS)
