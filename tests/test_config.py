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
        (["freeze.layers=0"], "config section 'freeze': freeze.layers is 0 and freeze.extra is empty, so nothing would train"),
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
        "a": 16, "b": True, "c": [1, 2], "d": {"e": "x"}, "f": "1e-4", "g": None,
    }


def test_every_required_top_level_key_exists():
    required = {"model", "template", "dataset", "method", "stage", "quantization", "optimizer", "output_dir",
                "cutoff_len", "batch_size", "gradient_accumulation_steps", "learning_rate", "num_epochs",
                "max_steps", "seed"}
    assert required <= set(RunConfig.model_fields)


def test_unknown_section_lookup():
    cfg = load_config()
    with pytest.raises(ConfigError, match="config section 'frezze' is not known"):
        cfg.options("frezze")
