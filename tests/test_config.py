"""The typed config: params.yaml's base values are the code's defaults, key for key; profiles validate;
typed overrides; method and variant names checked against the registry."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from prelar import config

REPO = Path(__file__).resolve().parents[1]
MISSING = "<missing>"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; an empty mapping stays a value (e.g. `pretrain.variants.prelar: {}`)."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_params_yaml_base_values_are_the_code_defaults():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw.pop("profiles")
    defaults = _flat(config.Params().model_dump())
    # every parameter is written in params.yaml (DVC tracks what is written there) ...
    assert sorted(set(defaults) - set(_flat(raw))) == []
    # ... with the value the code uses by default
    loaded = _flat(config.load(REPO / "params.yaml", profile="cpu").model_dump())
    differ = {
        key: f"params.yaml {loaded.get(key, MISSING)!r} != config.py {defaults.get(key, MISSING)!r}"
        for key in sorted(loaded.keys() | defaults.keys())
        if loaded.get(key, MISSING) != defaults.get(key, MISSING)
    }
    assert differ == {}
    assert config.load(REPO / "params.yaml", profile="cpu") == config.Params()


def test_every_profile_resolves_and_an_unknown_one_is_named():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name in raw["profiles"]:
        assert config.resolve(raw, profile=name).profile == name
    assert config.resolve(raw, profile="tiny").model.deter < config.Params().model.deter
    with pytest.raises(config.ConfigError, match="profile 'huge' is not defined"):
        config.resolve(raw, profile="huge")


def test_override_takes_typed_values_and_names_bad_keys():
    params = config.Params()
    assert config.override(params, {"data.ssv2.src": "null"}).data.ssv2.src == "null"  # never re-parsed
    assert config.override(params, {"data.ssv2.labels": None}).data.ssv2.labels is None
    bonus = config.override(params, {"finetune.bonus": {"k": 8}}).finetune.bonus
    assert bonus.k == 8 and bonus.window == params.finetune.bonus.window  # a section is updated, not reset
    with pytest.raises(config.ConfigError, match=r"^model\.detr: unknown parameter 'model\.detr'"):
        config.override(params, {"model.detr": 64})
    with pytest.raises(config.ConfigError, match=r"^modle\.deter: 'modle' is not a parameter section"):
        config.override(params, {"modle.deter": 64})
    with pytest.raises(config.ConfigError, match=r"invalid value .*\n  loader\.batch_size: "):
        config.override(params, {"loader.batch_size": "many"})


def test_methods_and_variants_are_checked_against_the_registry():
    params = config.Params()
    with pytest.raises(config.ConfigError, match=r"finetune\.method: .*unknown method 'dreamer'"):
        config.override(params, {"finetune.method": "dreamer"})
    with pytest.raises(config.ConfigError, match=r"finetune\.matrix\.methods: .*unknown method 'ppo'"):
        config.override(params, {"finetune.matrix.methods": ["prelar", "ppo"]})
    with pytest.raises(config.ConfigError, match=r"pretrain\.variants: .*unknown pre-training variant 'big'"):
        config.override(params, {"pretrain.variants": {"big": {"deter": 1024}}})
    with pytest.raises(config.ConfigError, match=r"pretrain\.variants: .*'apv' sets \{'action_free': Fals"):
        config.override(params, {"pretrain.variants": {"apv": {"action_free": False}}})
    with pytest.raises(config.ConfigError, match=r"pretrain\.variants: .*\['beta_z'\] are not `model`"):
        config.override(params, {"pretrain.variants": {"prelar": {"beta_z": 0.0}}})
    variants = config.override(params, {"pretrain.variants": {"prelar": {"beta_r": 0.0}}}).pretrain.variants
    assert variants["prelar"] == {"beta_r": 0.0}  # values that do not redefine the variant may be added
